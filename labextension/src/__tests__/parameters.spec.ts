import { formatParameter, parameterOverrides, parseParameter } from '../parameters';

describe('parameters', () => {
  it('formats defaults for editing', () => {
    expect(formatParameter('abc')).toBe('abc');
    expect(formatParameter(3)).toBe('3');
    expect(formatParameter(null)).toBe('null');
    expect(formatParameter([1, 2])).toBe('[1,2]');
  });

  it('parses by type', () => {
    expect(parseParameter('int', ' 42 ')).toEqual({ value: 42 });
    expect(parseParameter('int', '4.2')).toHaveProperty('error');
    expect(parseParameter('float', '1e-3')).toEqual({ value: 0.001 });
    expect(parseParameter('float', 'x')).toHaveProperty('error');
    expect(parseParameter('bool', 'True')).toEqual({ value: true });
    expect(parseParameter('bool', 'yes')).toHaveProperty('error');
    expect(parseParameter('str', ' a ')).toEqual({ value: ' a ' });
    expect(parseParameter('dict', '{"a": 1}')).toEqual({ value: { a: 1 } });
    expect(parseParameter('list', '[1,')).toHaveProperty('error');
  });

  it('sends only changed parameters', () => {
    const params = [
      { name: 'lr', type: 'float', default: 0.1 },
      { name: 'epochs', type: 'int', default: 3 },
      { name: 'name', type: 'str', default: 'x' }
    ];
    expect(parameterOverrides(params, { lr: '0.1', epochs: '5', name: 'x' })).toEqual({
      params: { epochs: 5 },
      errors: {}
    });
    expect(parameterOverrides(params, { epochs: 'five' }).errors).toEqual({
      epochs: 'epochs must be a whole number'
    });
  });
});

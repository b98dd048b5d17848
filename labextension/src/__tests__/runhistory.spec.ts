import { formatSeconds, runValues } from '../runhistory';

describe('run history', () => {
  it('formats durations', () => {
    expect(formatSeconds(3.24)).toBe('3.2 s');
    expect(formatSeconds(42.4)).toBe('42 s');
    expect(formatSeconds(125)).toBe('2 min 5 s');
  });

  it('shows parameters, then metrics', () => {
    expect(
      runValues({ params: { SEED: '1', C: 0.5 }, metrics: { accuracy: 0.933333333 } })
    ).toBe('SEED=1, C=0.5 · accuracy=0.9333');
    expect(runValues({ params: {}, metrics: {} })).toBe('');
  });
});

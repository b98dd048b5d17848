import { ITuneTrial } from '../api';
import { defaultSpec, rankTrials, tuneRequest } from '../tuneform';

function trial(number: number, value: number | null): ITuneTrial {
  return {
    number,
    params: { X: number },
    value,
    state: value === null ? 'failed' : 'complete',
    run_id: null,
    seconds: 1,
    cached_steps: 0,
    steps: 2,
    error: value === null ? 'boom' : null
  };
}

describe('defaultSpec', () => {
  it('starts around the default value', () => {
    expect(defaultSpec({ type: 'int', default: 50 })).toBe('25..100');
    expect(defaultSpec({ type: 'int', default: 1 })).toBe('1..2');
    expect(defaultSpec({ type: 'float', default: 0.3 })).toBe('0.03..3:log');
    expect(defaultSpec({ type: 'float', default: 0 })).toBe('0..1');
    expect(defaultSpec({ type: 'bool', default: true })).toBe('true,false');
    expect(defaultSpec({ type: 'str', default: 'adam' })).toBe('adam');
  });
});

describe('tuneRequest', () => {
  const form = {
    specs: { X: '1..5', Y: 'a,b' },
    objective: 'score',
    maximize: true,
    trials: '8',
    parallel: '2',
    algorithm: 'tpe' as const
  };

  it('turns the form into --search items', () => {
    expect(tuneRequest(form)).toEqual({ search: ['X=1..5', 'Y=a,b'], problems: [] });
  });

  it('keeps an incomplete form back, saying why', () => {
    const { problems } = tuneRequest({
      ...form,
      specs: { X: ' ' },
      objective: '',
      trials: '0',
      parallel: 'x'
    });
    expect(problems).toEqual([
      'give X a range (LOW..HIGH) or choices (A,B,C)',
      'choose the metric to optimise',
      'trials: a whole number of at least 1',
      'parallel trials: a whole number of at least 1'
    ]);
    expect(tuneRequest({ ...form, specs: {} }).problems).toContain(
      'tick at least one parameter to tune'
    );
  });
});

describe('rankTrials', () => {
  it('puts the best first by the direction, failed trials last', () => {
    const trials = [trial(0, 3), trial(1, null), trial(2, 9), trial(3, 5)];
    expect(rankTrials({ trials, direction: 'maximize' }).map(t => t.number)).toEqual([2, 3, 0, 1]);
    expect(rankTrials({ trials, direction: 'minimize' }).map(t => t.number)).toEqual([0, 3, 2, 1]);
  });
});

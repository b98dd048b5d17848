/**
 * The panel's Tune section as data: a starting search range for a parameter,
 * the request the form sends, and the trials ranked best first.
 *
 * Pure functions, jest-tested. The server checks the request in full
 * (kale_py/tuning/space.py); this only keeps obviously empty forms back.
 */
import { IParameterInfo, ITune, ITuneTrial } from './api';

/** A first search range around the parameter's default, in nb2pipe tune's SPEC syntax. */
export function defaultSpec(p: Pick<IParameterInfo, 'type' | 'default'>): string {
  const d = p.default;
  if (p.type === 'int' && typeof d === 'number') {
    const low = Math.max(1, Math.floor(d / 2));
    return `${low}..${Math.max(low + 1, d * 2)}`;
  }
  if (p.type === 'float' && typeof d === 'number') {
    return d > 0 ? `${+(d / 10).toPrecision(3)}..${+(d * 10).toPrecision(3)}:log` : '0..1';
  }
  if (p.type === 'bool') {
    return 'true,false';
  }
  return typeof d === 'string' ? d : JSON.stringify(d);
}

export interface ITuneForm {
  /** Spec text by parameter, for the parameters ticked for tuning. */
  specs: Record<string, string>;
  objective: string;
  maximize: boolean;
  trials: string;
  parallel: string;
  algorithm: 'random' | 'grid' | 'tpe';
}

/** The `nb2pipe tune` request of a form, or the problems that keep it back. */
export function tuneRequest(form: ITuneForm): {
  search: string[];
  problems: string[];
} {
  const problems: string[] = [];
  const search = Object.entries(form.specs).map(([name, spec]) => {
    if (!spec.trim()) {
      problems.push(`give ${name} a range (LOW..HIGH) or choices (A,B,C)`);
    }
    return `${name}=${spec.trim()}`;
  });
  if (!search.length) {
    problems.push('tick at least one parameter to tune');
  }
  if (!form.objective) {
    problems.push('choose the metric to optimise');
  }
  for (const [label, text] of [
    ['trials', form.trials],
    ['parallel trials', form.parallel]
  ]) {
    if (!/^[1-9]\d*$/.test(text.trim())) {
      problems.push(`${label}: a whole number of at least 1`);
    }
  }
  return { search, problems };
}

/** Complete trials best first, then the failed ones. */
export function rankTrials(tune: Pick<ITune, 'trials' | 'direction'>): ITuneTrial[] {
  const sign = tune.direction === 'maximize' ? -1 : 1;
  const done = tune.trials
    .filter(t => t.value !== null)
    .sort((a, b) => sign * ((a.value as number) - (b.value as number)));
  return [...done, ...tune.trials.filter(t => t.value === null)];
}

/**
 * How the panel's list of past runs shows a run: pure functions, jest-tested.
 */
import { IRunSummary } from './api';

export function formatSeconds(seconds: number): string {
  if (seconds < 60) {
    return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  }
  const m = Math.floor(seconds / 60);
  return `${m} min ${Math.round(seconds - 60 * m)} s`;
}

/** "SEED=1, TEST_SIZE=0.2 · accuracy=0.93" */
export function runValues(r: Pick<IRunSummary, 'params' | 'metrics'>): string {
  const fmt = (o: Record<string, unknown>) =>
    Object.entries(o)
      .map(([k, v]) => `${k}=${formatValue(v)}`)
      .join(', ');
  return [fmt(r.params ?? {}), fmt(r.metrics ?? {})].filter(Boolean).join(' · ');
}

function formatValue(v: unknown): string {
  if (typeof v === 'number') {
    return String(+v.toPrecision(4));
  }
  return typeof v === 'string' ? v : JSON.stringify(v);
}

/**
 * Which step each notebook cell belongs to, shown on the cell itself.
 *
 * Every code cell gets a label at its edge: its step's name and colour (the
 * same colour the graph uses, derived from the name so it is stable across
 * reloads), or its role when it is not part of a step (imports, functions,
 * parameters, metrics, skipped). Hovering the label tells what the step loads
 * and from where, and which steps it runs after.
 *
 * `cellLabels` is pure (jest-tested); `labelCell` touches the DOM.
 */
import { IStepInfo } from './api';
import { Role, parseCellTags } from './tags';

export type CellKind = Exclude<Role, 'none' | 'step'> | 'step';

export interface ICellLabel {
  kind: CellKind;
  /** What the label shows: the step's name or the role. */
  text: string;
  /** The step's name ('' for role cells). */
  step: string;
  /** CSS colour of the label and the cell's edge. */
  color: string;
  /** Hover text: the dependencies. */
  title: string;
}

export const LABEL_CLASS = 'kale-py-cell-step';
export const LABELLED_CLASS = 'kale-py-cell-labelled';
export const HIGHLIGHT_CLASS = 'kale-py-cell-highlight';

const ROLE_TEXT: Record<Exclude<CellKind, 'step'>, string> = {
  imports: 'imports',
  functions: 'functions',
  'pipeline-parameters': 'parameters',
  'pipeline-metrics': 'metrics',
  skip: 'skipped'
};

const ROLE_COLOR = 'var(--jp-layout-color4, #757575)';

/** A stable colour for a step name (FNV-1a hash to a hue). */
export function stepColor(name: string): string {
  let hash = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) {
    hash ^= name.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  // golden-angle spread of the hash keeps neighbouring names apart
  const hue = Math.round((hash % 360) * 137.508) % 360;
  return `hsl(${hue}, 62%, 42%)`;
}

/** "loads X, y from split; model from train · after: load" */
export function dependencyText(step: Pick<IStepInfo, 'loads' | 'prev'>): string {
  const bySource = new Map<string, string[]>();
  for (const [variable, source] of Object.entries(step.loads)) {
    bySource.set(source, [...(bySource.get(source) ?? []), variable]);
  }
  const parts: string[] = [];
  const loads = [...bySource.entries()].map(
    ([source, vars]) => `${vars.sort().join(', ')} from ${source}`
  );
  parts.push(loads.length ? `loads ${loads.join('; ')}` : 'loads nothing');
  if (step.prev.length) {
    parts.push(`after: ${step.prev.join(', ')}`);
  }
  return parts.join(' · ');
}

/**
 * The label of each cell, by JupyterLab cell index.
 *
 * `steps` come from /analyse (their `cells` are numbered from 1, markdown
 * included); `tags` and `types` are the notebook's cells in order. Untagged
 * code cells take the role of the cell above, as kale_py reads them.
 */
export function cellLabels(
  steps: readonly Pick<IStepInfo, 'name' | 'cells' | 'loads' | 'prev'>[],
  tags: readonly (readonly string[])[],
  types: readonly string[]
): Map<number, ICellLabel> {
  const stepOfCell = new Map<number, Pick<IStepInfo, 'name' | 'cells' | 'loads' | 'prev'>>();
  for (const step of steps) {
    for (const cell of step.cells) {
      stepOfCell.set(cell - 1, step);
    }
  }
  const labels = new Map<number, ICellLabel>();
  let role: Role = 'none';
  types.forEach((type, index) => {
    if (type !== 'code') {
      return;
    }
    const parsed = parseCellTags(tags[index] ?? []);
    if (parsed.role !== 'none') {
      role = parsed.role;
    }
    const step = stepOfCell.get(index);
    if (step && parsed.role !== 'skip') {
      labels.set(index, {
        kind: 'step',
        text: step.name,
        step: step.name,
        color: stepColor(step.name),
        title: `step ${step.name}: ${dependencyText(step)}`
      });
      return;
    }
    const kind: Role = parsed.role === 'skip' ? 'skip' : role;
    if (kind === 'none' || kind === 'step') {
      return; // not part of the pipeline (the analysis has not caught up yet)
    }
    labels.set(index, {
      kind,
      text: ROLE_TEXT[kind],
      step: '',
      color: ROLE_COLOR,
      title: roleTitle(kind)
    });
  });
  return labels;
}

function roleTitle(kind: Exclude<CellKind, 'step'>): string {
  switch (kind) {
    case 'imports':
      return 'imports: run at the start of every step';
    case 'functions':
      return 'functions: defined at the start of every step';
    case 'pipeline-parameters':
      return 'pipeline parameters: values a run can override';
    case 'pipeline-metrics':
      return 'pipeline metrics: reported by the pipeline';
    case 'skip':
      return 'skipped: left out of the pipeline';
  }
}

/** Remove what `labelCell` added. */
export function unlabelCell(node: HTMLElement): void {
  node.classList.remove(LABELLED_CLASS);
  node.style.removeProperty('--kale-py-step-color');
  node.querySelectorAll(`.${LABEL_CLASS}`).forEach(el => el.remove());
}

/** Put (or replace) a cell's label; `onClick` runs when the label is clicked. */
export function labelCell(
  node: HTMLElement,
  label: ICellLabel | undefined,
  onClick: () => void
): void {
  unlabelCell(node);
  if (!label) {
    return;
  }
  node.classList.add(LABELLED_CLASS);
  node.style.setProperty('--kale-py-step-color', label.color);
  const el = document.createElement('button');
  el.className = `${LABEL_CLASS} kale-py-cell-${label.kind}`;
  el.type = 'button';
  el.textContent = label.text;
  el.title = label.title;
  el.dataset.step = label.step;
  el.dataset.kind = label.kind;
  el.style.backgroundColor = label.color;
  el.addEventListener('click', event => {
    event.stopPropagation();
    onClick();
  });
  // In the input area (bottom right), where JupyterLab's cell toolbar does not go.
  const input = node.querySelector(':scope > .jp-Cell-inputWrapper') ?? node;
  input.appendChild(el);
}

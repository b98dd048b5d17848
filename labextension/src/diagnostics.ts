/**
 * Diagnostics from /analyse, shown on the notebook cells they concern.
 *
 * kale_py numbers cells from 1 in notebook order, markdown cells included, so
 * diagnostic cell N is JupyterLab's cell N - 1. A marked cell gets a class
 * (for the coloured border) and a small message element under its input.
 */
import { IDiagnostic } from './request';

export type Severity = IDiagnostic['severity'];

const RANK: Record<Severity, number> = { error: 0, warning: 1, info: 2 };

export const CELL_CLASS: Readonly<Record<Severity, string>> = {
  error: 'kale-py-cell-error',
  warning: 'kale-py-cell-warning',
  info: 'kale-py-cell-info'
};
export const CELL_MESSAGES_CLASS = 'kale-py-cell-diagnostics';

/** Diagnostics per JupyterLab cell index; notebook-wide ones are left out. */
export function diagnosticsByCell(
  diagnostics: readonly IDiagnostic[],
  cellCount: number
): Map<number, IDiagnostic[]> {
  const byCell = new Map<number, IDiagnostic[]>();
  for (const d of diagnostics) {
    if (d.cell === null || d.cell === undefined) {
      continue;
    }
    const index = d.cell - 1;
    if (!Number.isInteger(index) || index < 0 || index >= cellCount) {
      continue;
    }
    byCell.set(index, [...(byCell.get(index) ?? []), d]);
  }
  for (const list of byCell.values()) {
    list.sort(
      (a, b) =>
        RANK[a.severity] - RANK[b.severity] || (a.line ?? 0) - (b.line ?? 0)
    );
  }
  return byCell;
}

export function worstSeverity(
  diagnostics: readonly IDiagnostic[]
): Severity | null {
  let worst: Severity | null = null;
  for (const d of diagnostics) {
    if (worst === null || RANK[d.severity] < RANK[worst]) {
      worst = d.severity;
    }
  }
  return worst;
}

/** One line, as the command line prints it: `cell 7:3: error NB103: ...`. */
export function formatDiagnostic(d: IDiagnostic): string {
  const where =
    d.cell === null
      ? 'notebook'
      : `cell ${d.cell}` + (d.line !== null ? `:${d.line}` : '');
  return `${where}: ${d.severity} ${d.code}: ${d.message}`;
}

/** Remove the marks `markCell` added to a cell node. */
export function unmarkCell(node: HTMLElement): void {
  node.classList.remove(...Object.values(CELL_CLASS));
  node
    .querySelectorAll(`:scope > .${CELL_MESSAGES_CLASS}`)
    .forEach(el => el.remove());
}

/**
 * Mark a cell node with its diagnostics (replacing earlier marks). The
 * message element goes right under the cell's input, above its outputs.
 */
export function markCell(
  node: HTMLElement,
  diagnostics: readonly IDiagnostic[]
): void {
  unmarkCell(node);
  const worst = worstSeverity(diagnostics);
  if (worst === null) {
    return;
  }
  node.classList.add(CELL_CLASS[worst]);
  const box = document.createElement('div');
  box.className = CELL_MESSAGES_CLASS;
  for (const d of diagnostics) {
    const line = document.createElement('div');
    line.className = `kale-py-cell-diagnostic kale-py-${d.severity}`;
    line.dataset.code = d.code;
    line.textContent =
      `${d.code}` + (d.line !== null ? ` (line ${d.line})` : '') + `: ${d.message}`;
    box.appendChild(line);
  }
  const outputs = node.querySelector(':scope > .jp-Cell-outputWrapper');
  node.insertBefore(box, outputs);
}

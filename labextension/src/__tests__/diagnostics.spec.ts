import {
  CELL_CLASS,
  CELL_MESSAGES_CLASS,
  diagnosticsByCell,
  formatDiagnostic,
  markCell,
  unmarkCell,
  worstSeverity
} from '../diagnostics';
import { IDiagnostic } from '../request';

function diag(
  severity: IDiagnostic['severity'],
  cell: number | null,
  line: number | null = null,
  code = 'NB103'
): IDiagnostic {
  return { severity, code, message: `${code} message`, cell, line, step: null };
}

describe('diagnosticsByCell', () => {
  it('maps kale_py cell numbers (from 1) to JupyterLab indices (from 0)', () => {
    const byCell = diagnosticsByCell([diag('error', 1), diag('warning', 3)], 3);
    expect([...byCell.keys()]).toEqual([0, 2]);
  });

  it('leaves out notebook-wide and out-of-range diagnostics', () => {
    const byCell = diagnosticsByCell([diag('error', null), diag('error', 0), diag('error', 9)], 3);
    expect(byCell.size).toBe(0);
  });

  it('orders a cell\'s diagnostics by severity, then line', () => {
    const byCell = diagnosticsByCell(
      [diag('warning', 2, 1, 'NB201'), diag('error', 2, 5), diag('error', 2, 2)],
      2
    );
    expect(byCell.get(1)!.map(d => [d.severity, d.line])).toEqual([
      ['error', 2],
      ['error', 5],
      ['warning', 1]
    ]);
  });
});

describe('worstSeverity and formatDiagnostic', () => {
  it('finds the worst', () => {
    expect(worstSeverity([])).toBeNull();
    expect(worstSeverity([diag('info', 1), diag('warning', 1)])).toBe('warning');
    expect(worstSeverity([diag('warning', 1), diag('error', 1)])).toBe('error');
  });

  it('formats like the command line', () => {
    expect(formatDiagnostic(diag('error', 7, 3))).toBe('cell 7:3: error NB103: NB103 message');
    expect(formatDiagnostic(diag('warning', null, null, 'NB003'))).toBe(
      'notebook: warning NB003: NB003 message'
    );
  });
});

describe('markCell', () => {
  function cellNode(): HTMLElement {
    const node = document.createElement('div');
    node.className = 'jp-Cell';
    node.innerHTML =
      '<div class="jp-Cell-inputWrapper"></div><div class="jp-Cell-outputWrapper"></div>';
    return node;
  }

  it('adds the class of the worst severity and the messages under the input', () => {
    const node = cellNode();
    markCell(node, [diag('warning', 1, 1, 'NB201'), diag('error', 1, 2)]);
    expect(node.classList.contains(CELL_CLASS.error)).toBe(true);
    const box = node.querySelector(`.${CELL_MESSAGES_CLASS}`)!;
    expect(box.previousElementSibling!.className).toBe('jp-Cell-inputWrapper');
    expect(box.nextElementSibling!.className).toBe('jp-Cell-outputWrapper');
    expect(box.textContent).toContain('NB103 (line 2): NB103 message');
    expect(box.querySelectorAll('[data-code]').length).toBe(2);
  });

  it('replaces earlier marks and removes them when there is nothing to show', () => {
    const node = cellNode();
    markCell(node, [diag('error', 1)]);
    markCell(node, [diag('warning', 1)]);
    expect(node.classList.contains(CELL_CLASS.error)).toBe(false);
    expect(node.classList.contains(CELL_CLASS.warning)).toBe(true);
    expect(node.querySelectorAll(`.${CELL_MESSAGES_CLASS}`).length).toBe(1);
    markCell(node, []);
    expect(node.className).toBe('jp-Cell');
    expect(node.querySelector(`.${CELL_MESSAGES_CLASS}`)).toBeNull();
    markCell(node, [diag('info', 1)]);
    unmarkCell(node);
    expect(node.className).toBe('jp-Cell');
  });
});

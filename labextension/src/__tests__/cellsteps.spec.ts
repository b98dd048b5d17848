import { IStepInfo } from '../api';
import { cellLabels, dependencyText, labelCell, stepColor, unlabelCell } from '../cellsteps';

type Step = Pick<IStepInfo, 'name' | 'cells' | 'loads' | 'prev'>;
const steps: Step[] = [
  { name: 'load', cells: [3], loads: {}, prev: [] },
  { name: 'split', cells: [4, 5], loads: { df: 'load' }, prev: [] },
  {
    name: 'train',
    cells: [7],
    loads: { y: 'split', X: 'split', seed: 'load' },
    prev: ['load']
  }
];
const tags = [
  ['imports'],
  [],
  ['step:load'],
  ['step:split'],
  [],
  [],
  ['step:train', 'prev:load'],
  ['skip'],
  ['pipeline-metrics']
];
const types = ['code', 'code', 'code', 'code', 'code', 'markdown', 'code', 'code', 'code'];

describe('stepColor', () => {
  it('is stable and tells steps apart', () => {
    expect(stepColor('train')).toBe(stepColor('train'));
    const colors = new Set(['load', 'split', 'train', 'evaluate', 'a', 'b'].map(stepColor));
    expect(colors.size).toBe(6);
    expect(stepColor('train')).toMatch(/^hsl\(\d+, 62%, 42%\)$/);
  });
});

describe('dependencyText', () => {
  it('groups loads by their source and names the prev steps', () => {
    expect(dependencyText(steps[2])).toBe('loads X, y from split; seed from load · after: load');
    expect(dependencyText(steps[0])).toBe('loads nothing');
  });
});

describe('cellLabels', () => {
  const labels = cellLabels(steps, tags, types);

  it('labels each code cell with its step or role', () => {
    expect([...labels.entries()].map(([i, l]) => [i, l.kind, l.text])).toEqual([
      [0, 'imports', 'imports'],
      [1, 'imports', 'imports'], // untagged: continues the imports block
      [2, 'step', 'load'],
      [3, 'step', 'split'],
      [4, 'step', 'split'],
      [6, 'step', 'train'],
      [7, 'skip', 'skipped'],
      [8, 'pipeline-metrics', 'metrics']
    ]);
  });

  it('gives a step the same colour on each of its cells, with its dependencies on hover', () => {
    expect(labels.get(3)!.color).toBe(labels.get(4)!.color);
    expect(labels.get(3)!.color).toBe(stepColor('split'));
    expect(labels.get(6)!.title).toBe(
      'step train: loads X, y from split; seed from load · after: load'
    );
  });

  it('follows tag changes before the analysis catches up', () => {
    const changed = cellLabels(steps, [['functions'], ...tags.slice(1)], types);
    expect(changed.get(0)!.kind).toBe('functions');
    expect(changed.get(1)!.kind).toBe('functions');
  });
});

describe('labelCell', () => {
  it('puts one clickable label on the cell and removes it again', () => {
    const node = document.createElement('div');
    node.appendChild(document.createElement('div'));
    const clicks: number[] = [];
    const label = cellLabels(steps, tags, types).get(6)!;
    labelCell(node, label, () => clicks.push(6));
    labelCell(node, label, () => clicks.push(6)); // replaced, not added
    const el = node.querySelectorAll('.kale-py-cell-step');
    expect(el).toHaveLength(1);
    expect(el[0].textContent).toBe('train');
    expect((el[0] as HTMLElement).title).toContain('loads X, y from split');
    expect(node.style.getPropertyValue('--kale-py-step-color')).toBe(stepColor('train'));
    (el[0] as HTMLElement).click();
    expect(clicks).toEqual([6]);
    unlabelCell(node);
    expect(node.querySelectorAll('.kale-py-cell-step')).toHaveLength(0);
    expect(node.classList.contains('kale-py-cell-labelled')).toBe(false);
  });
});

/**
 * Layout of the step graph drawn in the panel.
 *
 * Steps sit in rows by their level from /analyse (level 0 on top: steps that
 * need nothing), so every edge points downwards. Within a row, steps are
 * ordered by the mean position of the steps they depend on, which removes
 * most crossings of small pipelines without a graph library.
 *
 * Pure functions: unit-tested with jest; the SVG is drawn by graphview.tsx.
 */

export interface IGraphInput {
  steps: readonly { name: string }[];
  edges: readonly {
    source: string;
    target: string;
    variables: readonly string[];
    kind: 'data' | 'order';
  }[];
  levels: readonly (readonly string[])[];
}

export interface INodeBox {
  name: string;
  label: string;
  level: number;
  /** Top-left corner. */
  x: number;
  y: number;
  width: number;
  height: number;
}

export interface IEdgePath {
  source: string;
  target: string;
  kind: 'data' | 'order';
  /** SVG path data, from the bottom of the source to the top of the target. */
  d: string;
  /** The variables passed, shortened to fit; `title` has them all. */
  label: string;
  title: string;
  labelX: number;
  labelY: number;
}

export interface IGraphLayout {
  width: number;
  height: number;
  nodes: INodeBox[];
  edges: IEdgePath[];
}

export const LAYOUT = {
  margin: 8,
  nodeHeight: 24,
  rowGap: 44,
  columnGap: 14,
  charWidth: 7,
  /** Edge labels use a smaller font. */
  labelCharWidth: 6,
  /** Edge labels start this far right of their edge's midpoint. */
  labelOffset: 4,
  minNodeWidth: 48,
  maxLabelChars: 20,
  maxEdgeLabelChars: 28
};

/** `text` cut to `max` characters, with an ellipsis when cut. */
export function shorten(text: string, max: number): string {
  return text.length <= max ? text : text.slice(0, Math.max(1, max - 1)) + '…';
}

function nodeWidth(label: string): number {
  return Math.max(LAYOUT.minNodeWidth, label.length * LAYOUT.charWidth + 16);
}

/** Rows of step names: the given levels, plus any step they miss as a last row. */
function rowsOf(graph: IGraphInput): string[][] {
  const known = new Set(graph.steps.map(s => s.name));
  const placed = new Set<string>();
  const rows: string[][] = [];
  for (const level of graph.levels) {
    const row = level.filter(n => known.has(n) && !placed.has(n));
    row.forEach(n => placed.add(n));
    if (row.length) {
      rows.push(row);
    }
  }
  const missing = graph.steps.map(s => s.name).filter(n => !placed.has(n));
  if (missing.length) {
    rows.push(missing);
  }
  return rows;
}

export function layoutGraph(graph: IGraphInput): IGraphLayout {
  const rows = rowsOf(graph);
  const labels = new Map<string, string>();
  for (const row of rows) {
    for (const name of row) {
      labels.set(name, shorten(name, LAYOUT.maxLabelChars));
    }
  }
  const rowWidth = (row: string[]) =>
    row.reduce((w, n) => w + nodeWidth(labels.get(n)!), 0) +
    LAYOUT.columnGap * (row.length - 1);
  const inner = Math.max(0, ...rows.map(rowWidth));

  const parents = new Map<string, string[]>();
  for (const e of graph.edges) {
    parents.set(e.target, [...(parents.get(e.target) ?? []), e.source]);
  }

  const boxes = new Map<string, INodeBox>();
  rows.forEach((row, level) => {
    const center = (name: string) => {
      const xs = (parents.get(name) ?? [])
        .map(p => boxes.get(p))
        .filter((b): b is INodeBox => b !== undefined)
        .map(b => b.x + b.width / 2);
      return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : Infinity;
    };
    // Stable sort: steps without placed parents keep their notebook order.
    const ordered = row
      .map((name, i) => ({ name, i, c: center(name) }))
      .sort((a, b) => (a.c === b.c ? a.i - b.i : a.c < b.c ? -1 : 1))
      .map(o => o.name);
    let x = LAYOUT.margin + (inner - rowWidth(row)) / 2;
    const y = LAYOUT.margin + level * (LAYOUT.nodeHeight + LAYOUT.rowGap);
    for (const name of ordered) {
      const label = labels.get(name)!;
      const width = nodeWidth(label);
      boxes.set(name, {
        name,
        label,
        level,
        x,
        y,
        width,
        height: LAYOUT.nodeHeight
      });
      x += width + LAYOUT.columnGap;
    }
  });

  const edges: IEdgePath[] = [];
  for (const e of graph.edges) {
    const s = boxes.get(e.source);
    const t = boxes.get(e.target);
    if (!s || !t) {
      continue;
    }
    const sx = s.x + s.width / 2;
    const sy = s.y + s.height;
    const tx = t.x + t.width / 2;
    const ty = t.y;
    const bend = (ty - sy) / 2;
    const title = e.variables.join(', ');
    edges.push({
      source: e.source,
      target: e.target,
      kind: e.kind,
      d: `M${sx},${sy} C${sx},${sy + bend} ${tx},${ty - bend} ${tx},${ty}`,
      label: shorten(title, LAYOUT.maxEdgeLabelChars),
      title: title || 'runs after',
      // the midpoint of this symmetric cubic curve
      labelX: (sx + tx) / 2,
      labelY: (sy + ty) / 2
    });
  }

  // Edge labels run to the right of their edge: widen the drawing to fit them.
  const labelsEnd = edges.map(
    e =>
      e.labelX +
      LAYOUT.labelOffset +
      e.label.length * LAYOUT.labelCharWidth +
      LAYOUT.margin
  );
  return {
    width: Math.max(inner + 2 * LAYOUT.margin, ...labelsEnd),
    height: rows.length
      ? 2 * LAYOUT.margin +
        rows.length * LAYOUT.nodeHeight +
        (rows.length - 1) * LAYOUT.rowGap
      : 0,
    nodes: [...boxes.values()],
    edges
  };
}

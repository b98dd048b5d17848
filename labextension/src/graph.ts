/**
 * Layout of the step graph: a layered drawing computed by dagre.
 *
 * Steps are ranked top to bottom along their dependencies (every edge points
 * downwards), crossings are reduced by dagre's ordering heuristics, and each
 * edge's variable label gets a place of its own in the layout so that labels
 * never sit on top of nodes or of each other. This module only adapts the
 * analysis to dagre and dagre's result to SVG geometry.
 *
 * Pure functions: unit-tested with jest; the SVG is drawn by graphview.tsx.
 */
import * as dagre from '@dagrejs/dagre';

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
  /** The step's level in the analysis (0: needs nothing). */
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
  /** Centre of the label's place in the layout. */
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
  nodeHeight: 26,
  /** Vertical distance between ranks. */
  rankGap: 36,
  /** Horizontal distance between nodes of a rank. */
  nodeGap: 16,
  charWidth: 7,
  /** Edge labels use a smaller font. */
  labelCharWidth: 6,
  labelHeight: 14,
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

/** Each step's level: its row in the analysis' levels, else one past the last. */
function levelsOf(graph: IGraphInput): Map<string, number> {
  const levels = new Map<string, number>();
  graph.levels.forEach((row, i) =>
    row.forEach(name => {
      if (!levels.has(name)) {
        levels.set(name, i);
      }
    })
  );
  return levels;
}

interface IPoint {
  x: number;
  y: number;
}

/** A smooth path through dagre's points: straight ends, quadratic bends between. */
export function pathThrough(points: readonly IPoint[]): string {
  if (points.length === 0) {
    return '';
  }
  const f = (p: IPoint) => `${round(p.x)},${round(p.y)}`;
  if (points.length < 3) {
    return `M${points.map(f).join(' L')}`;
  }
  let d = `M${f(points[0])}`;
  for (let i = 1; i < points.length - 1; i++) {
    const mid = {
      x: (points[i].x + points[i + 1].x) / 2,
      y: (points[i].y + points[i + 1].y) / 2
    };
    d += ` Q${f(points[i])} ${i === points.length - 2 ? f(points[i + 1]) : f(mid)}`;
  }
  return d;
}

function round(v: number): number {
  return Math.round(v * 10) / 10;
}

export function layoutGraph(graph: IGraphInput): IGraphLayout {
  const names = graph.steps.map(s => s.name);
  const known = new Set(names);
  if (names.length === 0) {
    return { width: 2 * LAYOUT.margin, height: 0, nodes: [], edges: [] };
  }
  const g = new dagre.graphlib.Graph({ multigraph: false });
  g.setGraph({
    rankdir: 'TB',
    ranksep: LAYOUT.rankGap,
    nodesep: LAYOUT.nodeGap,
    edgesep: 8,
    marginx: LAYOUT.margin,
    marginy: LAYOUT.margin
  });
  g.setDefaultEdgeLabel(() => ({}));
  const labels = new Map(names.map(n => [n, shorten(n, LAYOUT.maxLabelChars)]));
  for (const name of names) {
    g.setNode(name, { width: nodeWidth(labels.get(name)!), height: LAYOUT.nodeHeight });
  }
  const drawn = graph.edges.filter(
    e => known.has(e.source) && known.has(e.target) && e.source !== e.target
  );
  for (const e of drawn) {
    const label = shorten(e.variables.join(', '), LAYOUT.maxEdgeLabelChars);
    g.setEdge(e.source, e.target, {
      width: label ? label.length * LAYOUT.labelCharWidth + 6 : 0,
      height: label ? LAYOUT.labelHeight : 0,
      labelpos: 'c'
    });
  }
  dagre.layout(g);

  const levels = levelsOf(graph);
  const last = graph.levels.length;
  const nodes: INodeBox[] = names.map(name => {
    const n = g.node(name);
    return {
      name,
      label: labels.get(name)!,
      level: levels.get(name) ?? last,
      x: round(n.x - n.width / 2),
      y: round(n.y - n.height / 2),
      width: n.width,
      height: n.height
    };
  });
  const edges: IEdgePath[] = drawn.map(e => {
    const laid = g.edge(e.source, e.target) as dagre.GraphEdge;
    const title = e.variables.join(', ');
    return {
      source: e.source,
      target: e.target,
      kind: e.kind,
      d: pathThrough(laid.points ?? []),
      label: shorten(title, LAYOUT.maxEdgeLabelChars),
      title: title || 'runs after',
      labelX: round(laid.x ?? 0),
      labelY: round(laid.y ?? 0)
    };
  });
  const size = g.graph();
  return {
    width: Math.ceil(size.width ?? 0),
    height: Math.ceil(size.height ?? 0),
    nodes,
    edges
  };
}

/* Pan and zoom of the drawing in a view (the main-area tab). */

export interface IViewTransform {
  k: number;
  x: number;
  y: number;
}

export const MIN_ZOOM = 0.1;
export const MAX_ZOOM = 4;

/** The transform that shows the whole drawing centred in a `width`×`height` view. */
export function fitTransform(
  layout: Pick<IGraphLayout, 'width' | 'height'>,
  width: number,
  height: number
): IViewTransform {
  if (layout.width <= 0 || layout.height <= 0 || width <= 0 || height <= 0) {
    return { k: 1, x: 0, y: 0 };
  }
  const k = clamp(Math.min(width / layout.width, height / layout.height, 1.5));
  return {
    k,
    x: (width - layout.width * k) / 2,
    y: (height - layout.height * k) / 2
  };
}

/** Below this scale the first view is not fitted: labels would be too small to read. */
export const READABLE_ZOOM = 0.75;

/**
 * The first view of a drawing: fitted when it is readable so; otherwise at a
 * readable scale, centred horizontally, from the top (where the pipeline starts).
 */
export function initialTransform(
  layout: Pick<IGraphLayout, 'width' | 'height'>,
  width: number,
  height: number
): IViewTransform {
  const fitted = fitTransform(layout, width, height);
  if (fitted.k >= READABLE_ZOOM) {
    return fitted;
  }
  const k = READABLE_ZOOM;
  return { k, x: (width - layout.width * k) / 2, y: 0 };
}

/** Zoom by `factor` keeping the point (`px`, `py`) of the view where it is. */
export function zoomAt(
  t: IViewTransform,
  factor: number,
  px: number,
  py: number
): IViewTransform {
  const k = clamp(t.k * factor);
  const f = k / t.k;
  return { k, x: px - (px - t.x) * f, y: py - (py - t.y) * f };
}

function clamp(k: number): number {
  return Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, k));
}

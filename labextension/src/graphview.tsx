/**
 * The step graph as SVG: a layered layout (see graph.ts), edges labelled with
 * the variables that travel along them, nodes coloured by the status of the
 * current local run.
 *
 * In the side panel the drawing is scaled to the panel's width; in its own
 * main-area tab (`interactive`) it pans (drag), zooms (wheel, buttons) and fits
 * to the view.
 */
import * as React from 'react';
import {
  IGraphInput,
  IGraphLayout,
  IViewTransform,
  fitTransform,
  initialTransform,
  layoutGraph,
  zoomAt
} from './graph';
import { stepColor } from './cellsteps';

export interface IGraphViewProps {
  graph: IGraphInput;
  /** Step status in the current run, by step name. */
  status?: Record<string, string>;
  /** The step whose cells are highlighted in the notebook. */
  selected?: string | null;
  onSelectStep?: (name: string) => void;
  /** Pan, zoom and fit (the main-area tab). */
  interactive?: boolean;
}

function Drawing(props: IGraphViewProps & { layout: IGraphLayout }): JSX.Element {
  const { layout } = props;
  return (
    <>
      <defs>
        <marker
          id="kale-py-arrow"
          viewBox="0 0 10 10"
          refX="9"
          refY="5"
          markerWidth="6"
          markerHeight="6"
          orient="auto-start-reverse"
        >
          <path d="M 0 0 L 10 5 L 0 10 z" className="kale-py-arrowhead" />
        </marker>
      </defs>
      {layout.edges.map(e => (
        <g
          key={`${e.source}->${e.target}`}
          className={`kale-py-edge kale-py-edge-${e.kind}`}
          data-source={e.source}
          data-target={e.target}
        >
          <title>{`${e.source} → ${e.target}: ${e.title}`}</title>
          <path d={e.d} markerEnd="url(#kale-py-arrow)" />
          {e.label && (
            <text
              className="kale-py-edge-label"
              x={e.labelX}
              y={e.labelY}
              textAnchor="middle"
              dominantBaseline="middle"
            >
              {e.label}
            </text>
          )}
        </g>
      ))}
      {layout.nodes.map(n => {
        const status = props.status?.[n.name];
        const classes = ['kale-py-node'];
        if (status) {
          classes.push(`kale-py-status-${status}`);
        }
        if (props.selected === n.name) {
          classes.push('kale-py-node-selected');
        }
        return (
          <g
            key={n.name}
            className={classes.join(' ')}
            data-step={n.name}
            data-status={status ?? ''}
            transform={`translate(${n.x},${n.y})`}
            onClick={() => props.onSelectStep?.(n.name)}
          >
            <title>{status ? `${n.name}: ${status}` : n.name}</title>
            <rect width={n.width} height={n.height} rx={4} />
            <rect
              className="kale-py-node-swatch"
              width={5}
              height={n.height}
              rx={2}
              style={{ fill: stepColor(n.name) }}
            />
            <text
              x={n.width / 2 + 2}
              y={n.height / 2}
              textAnchor="middle"
              dominantBaseline="central"
            >
              {n.label}
            </text>
          </g>
        );
      })}
    </>
  );
}

function graphKey(graph: IGraphInput): string {
  return JSON.stringify([
    graph.steps.map(s => s.name),
    graph.edges.map(e => [e.source, e.target, e.kind, e.variables]),
    graph.levels
  ]);
}

export function GraphView(props: IGraphViewProps): JSX.Element {
  // Re-analyses that change nothing in the graph keep the layout (and the view).
  const key = graphKey(props.graph);
  // eslint-disable-next-line react-hooks/exhaustive-deps
  const layout = React.useMemo(() => layoutGraph(props.graph), [key]);
  if (!layout.nodes.length) {
    return <div className="kale-py-graph-empty">No steps yet.</div>;
  }
  if (props.interactive) {
    return <ZoomableGraph {...props} layout={layout} />;
  }
  return (
    <svg
      id="kale-py-graph"
      className="kale-py-graph"
      width="100%"
      style={{ maxWidth: layout.width }}
      viewBox={`0 0 ${layout.width} ${layout.height}`}
      preserveAspectRatio="xMidYMin meet"
      role="img"
      aria-label="pipeline step graph"
    >
      <Drawing {...props} layout={layout} />
    </svg>
  );
}

function ZoomableGraph(props: IGraphViewProps & { layout: IGraphLayout }): JSX.Element {
  const { layout } = props;
  const box = React.useRef<HTMLDivElement>(null);
  const [t, setT] = React.useState<IViewTransform>({ k: 1, x: 0, y: 0 });
  const drag = React.useRef<{ x: number; y: number } | null>(null);

  // What a resize of the tab re-applies: the first view, the fitted view, or
  // nothing once the user has panned or zoomed.
  const mode = React.useRef<'initial' | 'fit' | 'manual'>('initial');
  const apply = React.useCallback(() => {
    const el = box.current;
    if (!el || mode.current === 'manual') {
      return;
    }
    const view = mode.current === 'fit' ? fitTransform : initialTransform;
    setT(view(layout, el.clientWidth, el.clientHeight));
  }, [layout]);
  const fit = () => {
    mode.current = 'fit';
    apply();
  };
  // A new layout (the pipeline changed) starts from the first view again.
  React.useEffect(() => {
    mode.current = 'initial';
    apply();
  }, [apply]);
  React.useEffect(() => {
    const el = box.current;
    if (!el || typeof ResizeObserver === 'undefined') {
      return;
    }
    const observer = new ResizeObserver(() => apply());
    observer.observe(el);
    return () => observer.disconnect();
  }, [apply]);

  const zoom = (factor: number, px?: number, py?: number) => {
    const el = box.current;
    const cx = px ?? (el ? el.clientWidth / 2 : 0);
    const cy = py ?? (el ? el.clientHeight / 2 : 0);
    mode.current = 'manual';
    setT(current => zoomAt(current, factor, cx, cy));
  };
  const onWheel = (e: React.WheelEvent) => {
    const rect = box.current?.getBoundingClientRect();
    zoom(e.deltaY < 0 ? 1.15 : 1 / 1.15, e.clientX - (rect?.left ?? 0), e.clientY - (rect?.top ?? 0));
  };
  const onMouseDown = (e: React.MouseEvent) => {
    if ((e.target as Element).closest('.kale-py-node')) {
      return; // a click on a step selects it
    }
    drag.current = { x: e.clientX, y: e.clientY };
  };
  const onMouseMove = (e: React.MouseEvent) => {
    const start = drag.current;
    if (!start) {
      return;
    }
    drag.current = { x: e.clientX, y: e.clientY };
    mode.current = 'manual';
    setT(c => ({ ...c, x: c.x + e.clientX - start.x, y: c.y + e.clientY - start.y }));
  };
  const stop = () => {
    drag.current = null;
  };

  return (
    <div className="kale-py-graph-zoomable">
      <div className="kale-py-graph-toolbar">
        <button className="jp-Button" title="Zoom in" onClick={() => zoom(1.25)}>
          +
        </button>
        <button className="jp-Button" title="Zoom out" onClick={() => zoom(0.8)}>
          −
        </button>
        <button className="jp-Button kale-py-graph-fit" title="Fit to view" onClick={fit}>
          Fit
        </button>
        <span className="kale-py-graph-zoom">{Math.round(t.k * 100)}%</span>
      </div>
      <div
        ref={box}
        className="kale-py-graph-viewport"
        onWheel={onWheel}
        onMouseDown={onMouseDown}
        onMouseMove={onMouseMove}
        onMouseUp={stop}
        onMouseLeave={stop}
      >
        <svg
          id="kale-py-graph-main"
          className="kale-py-graph"
          width="100%"
          height="100%"
          role="img"
          aria-label="pipeline step graph"
        >
          <g
            className="kale-py-graph-content"
            transform={`translate(${t.x},${t.y}) scale(${t.k})`}
          >
            <Drawing {...props} layout={layout} />
          </g>
        </svg>
      </div>
    </div>
  );
}

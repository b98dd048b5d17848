/**
 * The step graph as a small SVG: steps in rows by level, edges labelled with
 * the variables that travel along them, nodes coloured by the status of the
 * current local run.
 */
import * as React from 'react';
import { IGraphInput, LAYOUT, layoutGraph } from './graph';

export interface IGraphViewProps {
  graph: IGraphInput;
  /** Step status in the current run, by step name. */
  status?: Record<string, string>;
  onSelectStep?: (name: string) => void;
}

export function GraphView(props: IGraphViewProps): JSX.Element {
  const layout = React.useMemo(() => layoutGraph(props.graph), [props.graph]);
  if (!layout.nodes.length) {
    return <div className="kale-py-graph-empty">No steps yet.</div>;
  }
  return (
    <svg
      id="kale-py-graph"
      className="kale-py-graph"
      width={layout.width}
      height={layout.height}
      viewBox={`0 0 ${layout.width} ${layout.height}`}
      role="img"
      aria-label="pipeline step graph"
    >
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
              x={e.labelX + LAYOUT.labelOffset}
              y={e.labelY}
              dominantBaseline="middle"
            >
              {e.label}
            </text>
          )}
        </g>
      ))}
      {layout.nodes.map(n => {
        const status = props.status?.[n.name];
        return (
          <g
            key={n.name}
            className={
              'kale-py-node' + (status ? ` kale-py-status-${status}` : '')
            }
            data-step={n.name}
            data-status={status ?? ''}
            transform={`translate(${n.x},${n.y})`}
            onClick={() => props.onSelectStep?.(n.name)}
          >
            <title>{status ? `${n.name}: ${status}` : n.name}</title>
            <rect width={n.width} height={n.height} rx={4} />
            <text
              x={n.width / 2}
              y={n.height / 2}
              textAnchor="middle"
              dominantBaseline="central"
            >
              {n.label}
            </text>
          </g>
        );
      })}
    </svg>
  );
}

import { IGraphInput, LAYOUT, layoutGraph, shorten } from '../graph';

function graph(
  levels: string[][],
  edges: [string, string, string[]][] = []
): IGraphInput {
  return {
    steps: levels.flat().map(name => ({ name })),
    levels,
    edges: edges.map(([source, target, variables]) => ({
      source,
      target,
      variables,
      kind: variables.length ? 'data' : 'order'
    }))
  };
}

describe('layoutGraph', () => {
  it('is empty without steps', () => {
    expect(layoutGraph(graph([]))).toEqual({ width: 2 * LAYOUT.margin, height: 0, nodes: [], edges: [] });
  });

  it('puts each level in its own row, top to bottom', () => {
    const layout = layoutGraph(
      graph([['load'], ['a', 'b'], ['join']], [
        ['load', 'a', ['df']],
        ['load', 'b', ['df']],
        ['a', 'join', ['x']],
        ['b', 'join', ['y']]
      ])
    );
    const y = Object.fromEntries(layout.nodes.map(n => [n.name, n.y]));
    expect(y.a).toBe(y.b);
    expect(y.load).toBeLessThan(y.a);
    expect(y.a).toBeLessThan(y.join);
    expect(layout.height).toBe(
      2 * LAYOUT.margin + 3 * LAYOUT.nodeHeight + 2 * LAYOUT.rowGap
    );
  });

  it('keeps nodes of a row apart and inside the drawing', () => {
    const layout = layoutGraph(graph([['a', 'b', 'c']]));
    const [a, b, c] = layout.nodes;
    expect(a.x + a.width).toBeLessThanOrEqual(b.x);
    expect(b.x + b.width).toBeLessThanOrEqual(c.x);
    expect(a.x).toBeGreaterThanOrEqual(0);
    expect(c.x + c.width).toBeLessThanOrEqual(layout.width);
  });

  it('orders a row by the position of its parents, removing crossings', () => {
    const layout = layoutGraph(
      graph([['left', 'right'], ['fromRight', 'fromLeft']], [
        ['left', 'fromLeft', ['l']],
        ['right', 'fromRight', ['r']]
      ])
    );
    const x = Object.fromEntries(layout.nodes.map(n => [n.name, n.x]));
    expect(x.fromLeft).toBeLessThan(x.fromRight);
  });

  it('draws edges from the bottom of the source to the top of the target, labelled with variables', () => {
    const layout = layoutGraph(graph([['load'], ['train']], [['load', 'train', ['df', 'y']]]));
    const load = layout.nodes.find(n => n.name === 'load')!;
    const train = layout.nodes.find(n => n.name === 'train')!;
    const [edge] = layout.edges;
    expect(edge.d.startsWith(`M${load.x + load.width / 2},${load.y + load.height} `)).toBe(true);
    expect(edge.d.endsWith(` ${train.x + train.width / 2},${train.y}`)).toBe(true);
    expect(edge.label).toBe('df, y');
    expect(edge.kind).toBe('data');
    expect(edge.labelY).toBe((load.y + load.height + train.y) / 2);
  });

  it('marks ordering-only edges', () => {
    const layout = layoutGraph(graph([['a'], ['b']], [['a', 'b', []]]));
    expect(layout.edges[0]).toMatchObject({ kind: 'order', label: '', title: 'runs after' });
  });

  it('shortens long labels but keeps them in the title', () => {
    const vars = Array.from({ length: 12 }, (_, i) => `variable_${i}`);
    const layout = layoutGraph(graph([['a'], ['b']], [['a', 'b', vars]]));
    expect(layout.edges[0].label.length).toBeLessThanOrEqual(LAYOUT.maxEdgeLabelChars);
    expect(layout.edges[0].label.endsWith('…')).toBe(true);
    expect(layout.edges[0].title).toBe(vars.join(', '));
    // the drawing is wide enough for the label
    const e = layout.edges[0];
    expect(layout.width).toBeGreaterThanOrEqual(
      e.labelX + e.label.length * LAYOUT.labelCharWidth
    );
  });

  it('places steps missing from the levels in a last row, and ignores unknown names', () => {
    const layout = layoutGraph({
      steps: [{ name: 'a' }, { name: 'b' }],
      levels: [['a', 'ghost']],
      edges: [{ source: 'ghost', target: 'b', variables: ['x'], kind: 'data' }]
    });
    expect(layout.nodes.map(n => [n.name, n.level])).toEqual([
      ['a', 0],
      ['b', 1]
    ]);
    expect(layout.edges).toEqual([]);
  });
});

describe('shorten', () => {
  it('cuts with an ellipsis', () => {
    expect(shorten('abcdef', 10)).toBe('abcdef');
    expect(shorten('abcdef', 4)).toBe('abc…');
  });
});

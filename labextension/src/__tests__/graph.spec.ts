import {
  IGraphInput,
  IGraphLayout,
  INodeBox,
  MAX_ZOOM,
  MIN_ZOOM,
  READABLE_ZOOM,
  fitTransform,
  initialTransform,
  layoutGraph,
  pathThrough,
  shorten,
  zoomAt
} from '../graph';

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

function byName(layout: IGraphLayout): Record<string, INodeBox> {
  return Object.fromEntries(layout.nodes.map(n => [n.name, n]));
}

function overlap(a: INodeBox, b: INodeBox): boolean {
  return a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;
}

/** A wide pipeline: load → 10 parallel branches of `depth` steps → join, and a tail. */
function wide(branches: number, depth: number, tail: number): IGraphInput {
  const levels: string[][] = [['load']];
  const edges: [string, string, string[]][] = [];
  for (let d = 0; d < depth; d++) {
    levels.push([]);
    for (let b = 0; b < branches; b++) {
      const name = `branch_${b}_${d}`;
      levels[d + 1].push(name);
      edges.push([d === 0 ? 'load' : `branch_${b}_${d - 1}`, name, [d === 0 ? 'df' : `x${b}`]]);
    }
  }
  levels.push(['join']);
  for (let b = 0; b < branches; b++) {
    edges.push([`branch_${b}_${depth - 1}`, 'join', [`model_${b}`]]);
  }
  let previous = 'join';
  for (let t = 0; t < tail; t++) {
    levels.push([`tail_${t}`]);
    edges.push([previous, `tail_${t}`, ['report']]);
    previous = `tail_${t}`;
  }
  return graph(levels, edges);
}

describe('layoutGraph', () => {
  it('is empty without steps', () => {
    expect(layoutGraph(graph([]))).toEqual({ width: 16, height: 0, nodes: [], edges: [] });
  });

  it('ranks steps top to bottom along their dependencies', () => {
    const layout = layoutGraph(
      graph([['load'], ['a', 'b'], ['join']], [
        ['load', 'a', ['df']],
        ['load', 'b', ['df']],
        ['a', 'join', ['x']],
        ['b', 'join', ['y']]
      ])
    );
    const n = byName(layout);
    expect(n.a.y).toBe(n.b.y);
    expect(n.load.y + n.load.height).toBeLessThan(n.a.y);
    expect(n.a.y + n.a.height).toBeLessThan(n.join.y);
    expect(n.a.level).toBe(1);
  });

  it('keeps every node apart and inside the drawing at 30 steps and 10 branches', () => {
    const layout = layoutGraph(wide(10, 2, 8));
    expect(layout.nodes).toHaveLength(30);
    for (const a of layout.nodes) {
      expect(a.x).toBeGreaterThanOrEqual(0);
      expect(a.y).toBeGreaterThanOrEqual(0);
      expect(a.x + a.width).toBeLessThanOrEqual(layout.width);
      expect(a.y + a.height).toBeLessThanOrEqual(layout.height);
      for (const b of layout.nodes) {
        if (a !== b) {
          expect(overlap(a, b)).toBe(false);
        }
      }
    }
    expect(layout.edges).toHaveLength(10 + 10 + 10 + 8);
  });

  it('places edge labels clear of the nodes', () => {
    const layout = layoutGraph(wide(10, 2, 3));
    for (const e of layout.edges) {
      const halfWidth = (e.label.length * 6) / 2;
      const box: INodeBox = {
        name: '',
        label: '',
        level: 0,
        x: e.labelX - halfWidth,
        y: e.labelY - 5,
        width: 2 * halfWidth,
        height: 10
      };
      for (const n of layout.nodes) {
        expect(overlap(box, n)).toBe(false);
      }
    }
  });

  it('orders a rank so that edges do not cross', () => {
    const layout = layoutGraph(
      graph([['left', 'right'], ['fromRight', 'fromLeft']], [
        ['left', 'fromLeft', ['l']],
        ['right', 'fromRight', ['r']]
      ])
    );
    const n = byName(layout);
    expect(n.left.x < n.right.x).toBe(n.fromLeft.x < n.fromRight.x);
  });

  it('draws edges from the source down to the target, labelled with variables', () => {
    const layout = layoutGraph(graph([['load'], ['train']], [['load', 'train', ['df', 'y']]]));
    const n = byName(layout);
    const [edge] = layout.edges;
    const start = edge.d.slice(1).split(/[ LQ]/)[0].split(',').map(Number);
    const end = edge.d.split(/[ LQ]/).pop()!.split(',').map(Number);
    expect(start[1]).toBeCloseTo(n.load.y + n.load.height, 0);
    expect(end[1]).toBeCloseTo(n.train.y, 0);
    expect(edge.label).toBe('df, y');
    expect(edge.kind).toBe('data');
    expect(edge.labelY).toBeGreaterThan(n.load.y + n.load.height);
    expect(edge.labelY).toBeLessThan(n.train.y);
  });

  it('marks ordering-only edges', () => {
    const layout = layoutGraph(graph([['a'], ['b']], [['a', 'b', []]]));
    expect(layout.edges[0]).toMatchObject({ kind: 'order', label: '', title: 'runs after' });
  });

  it('shortens long labels but keeps them in the title, inside the drawing', () => {
    const vars = Array.from({ length: 12 }, (_, i) => `variable_${i}`);
    const layout = layoutGraph(graph([['a'], ['b']], [['a', 'b', vars]]));
    const e = layout.edges[0];
    expect(e.label.length).toBeLessThanOrEqual(28);
    expect(e.label.endsWith('…')).toBe(true);
    expect(e.title).toBe(vars.join(', '));
    expect(e.labelX + (e.label.length * 6) / 2).toBeLessThanOrEqual(layout.width);
  });

  it('ignores edges to unknown steps; steps missing from the levels get the last level', () => {
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

describe('pathThrough', () => {
  it('is a line for two points and a smooth curve through more', () => {
    expect(pathThrough([{ x: 0, y: 0 }, { x: 0, y: 10 }])).toBe('M0,0 L0,10');
    expect(pathThrough([{ x: 0, y: 0 }, { x: 5, y: 5 }, { x: 10, y: 10 }])).toBe(
      'M0,0 Q5,5 10,10'
    );
    expect(pathThrough([])).toBe('');
  });
});

describe('fitTransform and zoomAt', () => {
  it('fits the whole drawing, centred, into the view', () => {
    const t = fitTransform({ width: 1000, height: 500 }, 500, 500);
    expect(t.k).toBeCloseTo(0.5);
    expect(t.x).toBeCloseTo(0);
    expect(t.y).toBeCloseTo(125);
    expect(fitTransform({ width: 0, height: 0 }, 500, 500)).toEqual({ k: 1, x: 0, y: 0 });
  });

  it('zooms about a point, which stays where it is, within the limits', () => {
    const t = zoomAt({ k: 1, x: 10, y: 20 }, 2, 100, 100);
    // the drawing point under (100, 100) before: ((100-10)/1, (100-20)/1)
    expect((100 - t.x) / t.k).toBeCloseTo(90);
    expect((100 - t.y) / t.k).toBeCloseTo(80);
    expect(zoomAt({ k: 1, x: 0, y: 0 }, 1000, 0, 0).k).toBe(MAX_ZOOM);
    expect(zoomAt({ k: 1, x: 0, y: 0 }, 0.0001, 0, 0).k).toBe(MIN_ZOOM);
  });
});

describe('shorten', () => {
  it('cuts with an ellipsis', () => {
    expect(shorten('abcdef', 10)).toBe('abcdef');
    expect(shorten('abcdef', 4)).toBe('abc…');
  });
});

describe('initialTransform', () => {
  it('fits a drawing that stays readable when fitted', () => {
    expect(initialTransform({ width: 400, height: 300 }, 800, 600)).toEqual(
      fitTransform({ width: 400, height: 300 }, 800, 600)
    );
  });

  it('keeps a wide drawing readable, from its top, centred', () => {
    const t = initialTransform({ width: 1400, height: 300 }, 500, 600);
    expect(t.k).toBe(READABLE_ZOOM);
    expect(t.y).toBe(0);
    expect(t.x).toBeCloseTo((500 - 1400 * READABLE_ZOOM) / 2);
  });
});

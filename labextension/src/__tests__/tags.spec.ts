import {
  earlierSteps,
  emptyCellTags,
  imageProblem,
  isManagedTag,
  parseCellTags,
  quantityProblem,
  stepNameProblem,
  writeCellTags
} from '../tags';

describe('parseCellTags', () => {
  it('reads each role', () => {
    expect(parseCellTags([]).role).toBe('none');
    expect(parseCellTags(['imports']).role).toBe('imports');
    expect(parseCellTags(['functions']).role).toBe('functions');
    expect(parseCellTags(['pipeline-parameters']).role).toBe('pipeline-parameters');
    expect(parseCellTags(['parameters']).role).toBe('pipeline-parameters');
    expect(parseCellTags(['pipeline-metrics']).role).toBe('pipeline-metrics');
    expect(parseCellTags(['skip']).role).toBe('skip');
  });

  it('reads step names, with Kale block: aliases', () => {
    expect(parseCellTags(['step:train'])).toMatchObject({ role: 'step', step: 'train' });
    expect(parseCellTags(['block:load'])).toMatchObject({ role: 'step', step: 'load' });
    // a bare block: continues the step above
    expect(parseCellTags(['block:'])).toMatchObject({ role: 'none', step: '' });
  });

  it('lets skip win over other roles, as kale_py does', () => {
    expect(parseCellTags(['step:a', 'skip'])).toMatchObject({ role: 'skip', step: '' });
  });

  it('reads prev, resources and image', () => {
    const model = parseCellTags([
      'step:train',
      'prev:load',
      'prev:clean',
      'prev:load',
      'limit:cpu:2',
      'limit:memory:4Gi',
      'limit:nvidia.com/gpu:1',
      'request:cpu:500m',
      'request:memory:1Gi',
      'image:python:3.11-slim'
    ]);
    expect(model.prev).toEqual(['load', 'clean']);
    expect(model.limits).toEqual({ cpu: '2', memory: '4Gi', gpu: '1' });
    expect(model.requests).toEqual({ cpu: '500m', memory: '1Gi', gpu: '' });
    expect(model.image).toBe('python:3.11-slim');
  });

  it('takes the last of repeated resource tags, as kale_py does', () => {
    expect(parseCellTags(['limit:cpu:1', 'limit:cpu:3']).limits.cpu).toBe('3');
  });
});

describe('isManagedTag', () => {
  it.each([
    'imports',
    'step:a',
    'block:',
    'prev:a',
    'limit:cpu:1',
    'request:nvidia.com/gpu:1',
    'image:x'
  ])('manages %s', tag => expect(isManagedTag(tag)).toBe(true));

  it.each([
    'label:team:ml',
    'annotation:a:b',
    'secret:s:k:ENV',
    'limit:amd.com/gpu:1',
    'limit:ephemeral-storage:1Gi',
    'cache:disabled',
    'hide-input',
    'imports-extra'
  ])('leaves %s alone', tag => expect(isManagedTag(tag)).toBe(false));
});

describe('writeCellTags', () => {
  it('makes an untagged cell a step', () => {
    expect(writeCellTags([], { ...emptyCellTags(), role: 'step', step: 'load' })).toEqual([
      'step:load'
    ]);
  });

  it('keeps every tag it does not manage, in place', () => {
    const before = ['hide-input', 'label:team:ml', 'step:old', 'secret:s:k:ENV', 'limit:amd.com/gpu:1'];
    const model = { ...parseCellTags(before), step: 'new' };
    expect(writeCellTags(before, model)).toEqual([
      'step:new',
      'hide-input',
      'label:team:ml',
      'secret:s:k:ENV',
      'limit:amd.com/gpu:1'
    ]);
  });

  it('round-trips any tag list unchanged when nothing is edited', () => {
    const lists = [
      ['parameters'],
      ['block:train', 'prev:load', 'foo'],
      ['x', 'step:a', 'limit:cpu:2', 'y', 'image:img:1'],
      ['block:'],
      []
    ];
    for (const tags of lists) {
      expect(writeCellTags(tags, parseCellTags(tags))).toEqual(tags);
    }
  });

  it("keeps an unchanged role's original spelling", () => {
    const model = { ...parseCellTags(['parameters', 'x']) };
    expect(writeCellTags(['parameters', 'x'], model)).toEqual(['parameters', 'x']);
    const step = { ...parseCellTags(['block:a']), prev: ['z'] };
    expect(writeCellTags(['block:a'], step)).toEqual(['block:a', 'prev:z']);
  });

  it('replaces the role and puts a new role first', () => {
    const before = ['keep', 'imports'];
    expect(writeCellTags(before, { ...parseCellTags(before), role: 'functions' })).toEqual([
      'functions',
      'keep'
    ]);
    expect(writeCellTags(['step:a', 'prev:b', 'x'], { ...emptyCellTags(), role: 'none' })).toEqual(['x']);
  });

  it('adds and removes prev edges', () => {
    const before = ['step:c', 'prev:a'];
    expect(writeCellTags(before, { ...parseCellTags(before), prev: ['a', 'b'] })).toEqual([
      'step:c',
      'prev:a',
      'prev:b'
    ]);
    expect(writeCellTags(before, { ...parseCellTags(before), prev: [] })).toEqual(['step:c']);
  });

  it('writes limits and requests, and drops cleared ones', () => {
    const before = ['step:t', 'limit:cpu:1', 'other'];
    const model = parseCellTags(before);
    const next = writeCellTags(before, {
      ...model,
      limits: { cpu: '', memory: '8Gi', gpu: '2' },
      requests: { cpu: '250m', memory: '', gpu: '' }
    });
    expect(next).toEqual([
      'step:t',
      'other',
      'limit:memory:8Gi',
      'limit:nvidia.com/gpu:2',
      'request:cpu:250m'
    ]);
  });

  it('changes a value in place', () => {
    const before = ['step:t', 'limit:cpu:1', 'other', 'image:a'];
    const model = parseCellTags(before);
    expect(
      writeCellTags(before, { ...model, limits: { ...model.limits, cpu: '2' }, image: 'b' })
    ).toEqual(['step:t', 'other', 'limit:cpu:2', 'image:b']);
  });

  it('trims values', () => {
    expect(
      writeCellTags([], { ...emptyCellTags(), role: 'step', step: ' s ', image: ' img ' })
    ).toEqual(['step:s', 'image:img']);
  });
});

describe('validation', () => {
  it('checks step names like kale_py', () => {
    expect(stepNameProblem('train_2-b')).toBeNull();
    expect(stepNameProblem('_x')).toBeNull();
    expect(stepNameProblem('')).not.toBeNull();
    expect(stepNameProblem('2train')).not.toBeNull();
    expect(stepNameProblem('has space')).not.toBeNull();
    expect(stepNameProblem('a:b')).not.toBeNull();
  });

  it('checks quantities', () => {
    expect(quantityProblem('cpu', '500m')).toBeNull();
    expect(quantityProblem('cpu', '0.5')).toBeNull();
    expect(quantityProblem('memory', '4Gi')).toBeNull();
    expect(quantityProblem('memory', '')).toBeNull();
    expect(quantityProblem('memory', '4 GB')).not.toBeNull();
    expect(quantityProblem('gpu', '2')).toBeNull();
    expect(quantityProblem('gpu', '0.5')).not.toBeNull();
  });

  it('checks images', () => {
    expect(imageProblem('registry/x:1')).toBeNull();
    expect(imageProblem('a b')).not.toBeNull();
  });
});

describe('earlierSteps', () => {
  const cells = [
    ['imports'],
    ['step:load'],
    [],
    ['step:clean'],
    ['step:train'],
    ['step:load'], // a repeated step: runs at its first cell
    ['step:evaluate']
  ];

  it('lists the steps above the cell', () => {
    expect(earlierSteps(cells, 4, 'train')).toEqual(['load', 'clean']);
    expect(earlierSteps(cells, 6, 'evaluate')).toEqual(['load', 'clean', 'train']);
    expect(earlierSteps(cells, 1, 'load')).toEqual([]);
  });

  it('uses the position of the first cell of a repeated step', () => {
    expect(earlierSteps(cells, 5, 'load')).toEqual([]);
  });

  it('lists all steps above a cell that is not a step yet', () => {
    expect(earlierSteps(cells, 2, '')).toEqual(['load']);
  });
});

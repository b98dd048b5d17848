/**
 * The part of kale_py's cell tag language the panel edits, as a small model.
 *
 * The panel manages a cell's role (`imports`, `step:NAME`, ...), its `prev:`
 * edges, its cpu/memory/GPU limits and requests and its `image:`. Every other
 * tag (`label:`, `secret:`, `limit:amd.com/gpu:1`, other tools' tags) is left
 * exactly as it was: writing a model back only touches the tags it manages.
 *
 * Pure functions, no JupyterLab imports: unit-tested with jest.
 */

/** What a cell is for. `none` = no role tag: the cell continues the block above. */
export type Role =
  | 'none'
  | 'imports'
  | 'functions'
  | 'pipeline-parameters'
  | 'pipeline-metrics'
  | 'step'
  | 'skip';

export const ROLES: readonly Role[] = [
  'none',
  'imports',
  'functions',
  'pipeline-parameters',
  'pipeline-metrics',
  'step',
  'skip'
];

/** Resource quantities as typed by the user; '' = not set. */
export interface IResources {
  cpu: string;
  memory: string;
  gpu: string;
}

export interface ICellTags {
  role: Role;
  /** The step name when `role` is `step`, '' otherwise. */
  step: string;
  /** Steps this one must run after (`prev:NAME`). */
  prev: string[];
  limits: IResources;
  requests: IResources;
  /** Container image of the step ('' = the notebook's base image). */
  image: string;
}

/** Kubernetes resource names behind the three resource fields. */
export const RESOURCE_NAMES: Readonly<Record<keyof IResources, string>> = {
  cpu: 'cpu',
  memory: 'memory',
  gpu: 'nvidia.com/gpu'
};

// Same rules as kale_py/tags.py, so the panel refuses what `check` would reject.
const STEP_NAME = /^[A-Za-z_][A-Za-z0-9_-]*$/;
const QUANTITY =
  /^[0-9]+(\.[0-9]+)?([eE][0-9]+|m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$/;

const PLAIN_ROLES: Readonly<Record<string, Role>> = {
  imports: 'imports',
  functions: 'functions',
  'pipeline-parameters': 'pipeline-parameters',
  parameters: 'pipeline-parameters', // papermill's spelling
  'pipeline-metrics': 'pipeline-metrics',
  skip: 'skip'
};

export function emptyResources(): IResources {
  return { cpu: '', memory: '', gpu: '' };
}

export function emptyCellTags(): ICellTags {
  return {
    role: 'none',
    step: '',
    prev: [],
    limits: emptyResources(),
    requests: emptyResources(),
    image: ''
  };
}

/** A role tag, including `step:NAME`, `block:NAME` and the bare `block:` / `step:`. */
function isRoleTag(tag: string): boolean {
  return (
    tag in PLAIN_ROLES || tag.startsWith('step:') || tag.startsWith('block:')
  );
}

function resourceField(
  kind: 'limit' | 'request',
  tag: string
): keyof IResources | null {
  const prefix = kind + ':';
  if (!tag.startsWith(prefix)) {
    return null;
  }
  const rest = tag.slice(prefix.length);
  for (const key of Object.keys(RESOURCE_NAMES) as (keyof IResources)[]) {
    if (rest.startsWith(RESOURCE_NAMES[key] + ':')) {
      return key;
    }
  }
  return null;
}

/** True for the tags the panel owns; all others are preserved untouched. */
export function isManagedTag(tag: string): boolean {
  return (
    isRoleTag(tag) ||
    tag.startsWith('prev:') ||
    tag.startsWith('image:') ||
    resourceField('limit', tag) !== null ||
    resourceField('request', tag) !== null
  );
}

/** Read a cell's tag list into the model. Unmanaged tags are ignored here. */
export function parseCellTags(tags: readonly string[]): ICellTags {
  const model = emptyCellTags();
  const roles: Role[] = [];
  for (const tag of tags) {
    if (tag in PLAIN_ROLES) {
      roles.push(PLAIN_ROLES[tag]);
    } else if (tag.startsWith('step:') || tag.startsWith('block:')) {
      const name = tag.slice(tag.indexOf(':') + 1);
      // A bare `block:` continues the step above: no role of its own.
      if (name) {
        roles.push('step');
        model.step = model.step || name;
      }
    } else if (tag.startsWith('prev:')) {
      const name = tag.slice('prev:'.length);
      if (name && !model.prev.includes(name)) {
        model.prev.push(name);
      }
    } else if (tag.startsWith('image:')) {
      model.image = tag.slice('image:'.length);
    } else {
      for (const kind of ['limit', 'request'] as const) {
        const field = resourceField(kind, tag);
        if (field) {
          // The last of repeated tags wins, as in kale_py.
          const value = tag.slice(`${kind}:${RESOURCE_NAMES[field]}:`.length);
          (kind === 'limit' ? model.limits : model.requests)[field] = value;
        }
      }
    }
  }
  // `skip` wins over any other role, as in kale_py; otherwise the first role.
  model.role = roles.includes('skip') ? 'skip' : roles[0] ?? 'none';
  if (model.role !== 'step') {
    model.step = '';
  }
  return model;
}

function sameRole(a: ICellTags, b: ICellTags): boolean {
  return a.role === b.role && (a.role !== 'step' || a.step === b.step);
}

/** The managed tags that express `model`, in a canonical order. */
function managedTags(model: ICellTags): string[] {
  const out: string[] = [];
  if (model.role === 'step') {
    out.push('step:' + model.step.trim());
  } else if (model.role !== 'none') {
    out.push(model.role);
  }
  for (const name of model.prev) {
    out.push('prev:' + name);
  }
  for (const kind of ['limit', 'request'] as const) {
    const values = kind === 'limit' ? model.limits : model.requests;
    for (const key of Object.keys(RESOURCE_NAMES) as (keyof IResources)[]) {
      const value = values[key].trim();
      if (value) {
        out.push(`${kind}:${RESOURCE_NAMES[key]}:${value}`);
      }
    }
  }
  if (model.image.trim()) {
    out.push('image:' + model.image.trim());
  }
  return out;
}

/**
 * The new tag list of a cell whose managed tags should express `model`.
 *
 * Unmanaged tags keep their place and spelling. A managed tag that still
 * applies stays where it was (an unchanged role keeps its original spelling,
 * e.g. papermill's `parameters` or Kale's `block:train`), so an edit shows up
 * as the smallest change in the notebook's diff. New tags are appended, except
 * a new role tag, which goes first where people look for it.
 */
export function writeCellTags(
  previous: readonly string[],
  model: ICellTags
): string[] {
  const keepRole = sameRole(parseCellTags(previous), model);
  const wanted = managedTags(model).filter(t => !(keepRole && isRoleTag(t)));
  const remaining = new Set(wanted);
  const kept: string[] = [];
  for (const tag of previous) {
    if (!isManagedTag(tag) || (keepRole && isRoleTag(tag))) {
      kept.push(tag);
    } else if (remaining.has(tag)) {
      kept.push(tag);
      remaining.delete(tag);
    }
  }
  const added = wanted.filter(t => remaining.has(t));
  return [
    ...added.filter(isRoleTag),
    ...kept,
    ...added.filter(t => !isRoleTag(t))
  ];
}

/** Why a step name is refused, or null when it is fine. */
export function stepNameProblem(name: string): string | null {
  if (!name.trim()) {
    return 'a step needs a name';
  }
  if (!STEP_NAME.test(name.trim())) {
    return "use letters, digits, '_' and '-', starting with a letter or '_'";
  }
  return null;
}

/** Why a resource quantity is refused, or null when it is fine ('' = unset). */
export function quantityProblem(
  field: keyof IResources,
  value: string
): string | null {
  const v = value.trim();
  if (!v) {
    return null;
  }
  if (field === 'gpu') {
    return /^[0-9]+$/.test(v) ? null : 'a whole number of GPUs';
  }
  if (!QUANTITY.test(v)) {
    return field === 'cpu'
      ? 'a CPU quantity like 2, 0.5 or 500m'
      : 'a memory quantity like 4Gi or 512Mi';
  }
  return null;
}

/** Why an image reference is refused, or null when it is fine ('' = unset). */
export function imageProblem(value: string): string | null {
  return /\s/.test(value.trim()) ? 'an image reference has no spaces' : null;
}

/**
 * Steps a cell's step may depend on: kale_py refuses a `prev:` to a step that
 * is not earlier in the notebook, and a step runs at the position of its first
 * cell. So: the steps whose first cell comes before the first cell of the
 * cell's own step (`ownStep`, '' for none) or, failing that, before `index`.
 * `cellTags` holds every cell's tags in notebook order.
 */
export function earlierSteps(
  cellTags: readonly (readonly string[])[],
  index: number,
  ownStep: string
): string[] {
  const names: string[] = [];
  for (let i = 0; i < Math.min(index, cellTags.length); i++) {
    const { role, step } = parseCellTags(cellTags[i]);
    if (role !== 'step') {
      continue;
    }
    if (step === ownStep) {
      break; // the own step starts here: later steps run after it
    }
    if (!names.includes(step)) {
      names.push(step);
    }
  }
  return names;
}

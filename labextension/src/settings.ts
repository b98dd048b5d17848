/**
 * Notebook-level pipeline settings in `metadata.kubeflow_notebook` (Kale's key).
 *
 * The panel edits a few of Kale's fields; everything else in the object
 * (Kale's other fields, keys of newer or older tools) is written back as it
 * was. Pure functions: unit-tested with jest.
 */

export const METADATA_KEY = 'kubeflow_notebook';

export interface IVolume {
  name: string;
  mount_point: string;
  type: string;
  /** Kale's other volume fields (size, annotations, ...) are kept. */
  [key: string]: unknown;
}

export interface INotebookSettings {
  pipeline_name: string;
  experiment_name: string;
  pipeline_description: string;
  base_image: string;
  volumes: IVolume[];
  enable_caching: boolean;
  kfp_host: string;
  /** Kubeflow PodDefaults the steps carry (their labels set to "true"). */
  poddefaults: string[];
}

type JSONObject = Record<string, unknown>;

function isObject(value: unknown): value is JSONObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function text(value: unknown): string {
  return typeof value === 'string' ? value : '';
}

/** A KFP-friendly pipeline name from a notebook path: `My Model.ipynb` -> `my-model`. */
export function pipelineNameFor(path: string): string {
  const base = path.split('/').pop() ?? '';
  const stem = base.replace(/\.[^.]*$/, '');
  const name = stem
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '');
  return name || 'pipeline';
}

export function defaultSettings(notebookPath: string): INotebookSettings {
  return {
    pipeline_name: pipelineNameFor(notebookPath),
    experiment_name: 'Default',
    pipeline_description: '',
    base_image: '',
    volumes: [],
    enable_caching: true,
    kfp_host: '',
    poddefaults: []
  };
}

/** The settings in a notebook's metadata value, or null when kale_py is not enabled. */
export function readSettings(raw: unknown): INotebookSettings | null {
  if (!isObject(raw)) {
    return null;
  }
  const volumes = Array.isArray(raw.volumes)
    ? raw.volumes.filter(isObject).map(v => ({
        ...v,
        name: text(v.name),
        mount_point: text(v.mount_point),
        type: text(v.type) || 'pvc'
      }))
    : [];
  return {
    pipeline_name: text(raw.pipeline_name),
    experiment_name:
      text(raw.experiment_name) ||
      (isObject(raw.experiment) ? text(raw.experiment.name) : ''),
    pipeline_description: text(raw.pipeline_description),
    // Kale's old name for the base image
    base_image: text(raw.base_image) || text(raw.docker_image),
    volumes,
    enable_caching: raw.enable_caching !== false,
    kfp_host: text(raw.kfp_host),
    poddefaults: Array.isArray(raw.poddefaults)
      ? raw.poddefaults.filter((p): p is string => typeof p === 'string')
      : []
  };
}

/** The new metadata value: `raw` with the panel's fields replaced, all other keys kept. */
export function writeSettings(
  raw: unknown,
  settings: INotebookSettings
): JSONObject {
  const out: JSONObject = isObject(raw) ? { ...raw } : {};
  out.pipeline_name = settings.pipeline_name.trim();
  out.experiment_name = settings.experiment_name.trim();
  out.pipeline_description = settings.pipeline_description;
  out.base_image = settings.base_image.trim();
  if (out.base_image && 'docker_image' in out) {
    // migrated to base_image: keeping both would warn on every check
    delete out.docker_image;
  }
  out.volumes = settings.volumes.map(v => ({
    ...v,
    name: v.name.trim(),
    mount_point: v.mount_point.trim(),
    type: v.type || 'pvc'
  }));
  out.enable_caching = settings.enable_caching;
  if (settings.kfp_host.trim() || 'kfp_host' in out) {
    out.kfp_host = settings.kfp_host.trim();
  }
  if (settings.poddefaults.length || 'poddefaults' in out) {
    out.poddefaults = [...settings.poddefaults];
  }
  return out;
}

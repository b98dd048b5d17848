/**
 * Typed calls of the kale_py REST API (see kale_py/server.py for the routes).
 */
import { ServerConnection } from '@jupyterlab/services';
import { IDiagnostic, requestAPI } from './request';

export type { IDiagnostic } from './request';

export interface IStepInfo {
  name: string;
  kfp_name: string;
  cells: number[];
  loads: Record<string, string>;
  saves: string[];
  prev: string[];
  level: number;
}

export interface IEdgeInfo {
  source: string;
  target: string;
  variables: string[];
  kind: 'data' | 'order';
}

export interface IParameterInfo {
  name: string;
  type: string;
  default: unknown;
  cell: number;
}

export interface IMetricInfo {
  name: string;
  variable: string;
  step: string;
  cell: number;
}

export interface IAnalysis {
  pipeline: {
    name: string | null;
    experiment: string | null;
    description: string | null;
  };
  steps: IStepInfo[];
  edges: IEdgeInfo[];
  levels: string[][];
  parameters: IParameterInfo[];
  metrics: IMetricInfo[];
  diagnostics: IDiagnostic[];
  /** `serve:VAR` models and the steps whose values of them are served. */
  served?: { variable: string; step: string }[];
}

export type RunStatus = 'running' | 'succeeded' | 'failed' | 'cancelled';
export type StepStatus =
  | 'pending'
  | 'running'
  | 'succeeded'
  | 'failed'
  | 'skipped'
  | 'cached';

export interface IStepRun {
  status: StepStatus;
  started: string | null;
  ended: string | null;
  error: { message: string; cell: number | null; line: number | null } | null;
}

export interface IRun {
  run_id: string;
  status: RunStatus;
  steps: Record<string, IStepRun>;
  metrics: Record<string, unknown>;
}

export interface IRunSummary {
  run_id: string;
  status: RunStatus;
  started: string | null;
  ended: string | null;
  /** Seconds; null while running. */
  duration: number | null;
  params: Record<string, unknown>;
  metrics: Record<string, unknown>;
}

/** A submitted run's state on the KFP endpoint. */
export interface IKfpRunStatus {
  run_id: string;
  /** KFP's run state: PENDING, RUNNING, SUCCEEDED, FAILED, ... */
  state: string;
  url?: string;
  failed_step: string | null;
  error: string | null;
}

export interface ICompiled {
  path: string;
  bytes: number;
  steps: number;
}

export interface ISubmitted {
  run_id: string;
  run_url: string;
  recurring_run_id?: string | null;
  pipeline_id: string;
  version_id: string;
  experiment_id: string;
  /** The `serve:VAR` models and the InferenceServices the run deploys them as. */
  served?: { variable: string; name: string }[];
}

/** A served model's InferenceService on the cluster (see kale_py/server.py ServingHandler). */
export interface IServedModel {
  variable: string;
  name: string;
  /** ready | not ready | not deployed | foreign */
  state: string;
  /** The V2 `infer` URL, once KServe reports one. */
  url: string;
  /** Why it is not ready, or not deployed. */
  message: string;
}

/** The notebook's local model server (`nb2pipe serve` started by the panel). */
export interface ILocalServing {
  url: string;
  port: number;
  pid: number;
  name: string;
  variable: string;
  step: string;
  run_id: string;
  started: string;
}

export interface IServingStatus {
  namespace: string;
  services: IServedModel[];
}

export interface IVolumes {
  in_cluster: boolean;
  image: string | null;
  volumes: {
    name: string;
    mount_point: string;
    claim: string;
    access_modes: string[];
  }[];
}

export type Params = Record<string, unknown>;

/** The namespace's PodDefaults (Kubeflow's admission webhook presets). */
export interface IPodDefaults {
  in_cluster: boolean;
  namespace: string | null;
  message: string | null;
  poddefaults: { name: string; description: string; labels: Record<string, string> }[];
}

/** What `nb2pipe verify` found (see kale_py/server.py VerifyHandler). */
export interface IVerifyResult {
  ok: boolean;
  differences: { name: string; step: string; kernel: string; pipeline: string }[];
  unstable: { name: string; step: string; kernel: string; pipeline: string }[];
  compared: number;
  steps: {
    step: string;
    status: string;
    compared: number;
    differences: string[];
    unstable: string[];
    error: string | null;
  }[];
  pipeline_status: string;
}

export interface ITuneTrial {
  number: number;
  params: Record<string, unknown>;
  value: number | null;
  state: 'complete' | 'failed';
  run_id: string | null;
  seconds: number;
  cached_steps: number;
  steps: number;
  error: string | null;
}

/** A local tuning (its tune.json). */
export interface ITune {
  tune_id: string;
  status: 'running' | 'succeeded' | 'failed';
  objective: string;
  direction: 'maximize' | 'minimize';
  algorithm: string;
  trials: ITuneTrial[];
  best: ITuneTrial | null;
  planned_trials?: number;
}

export interface ITuneRequest {
  search: string[];
  objective: string;
  maximize: boolean;
  trials: number;
  parallel: number;
  algorithm: 'random' | 'grid' | 'tpe';
}

function post<T>(
  endPoint: string,
  body: unknown,
  settings?: ServerConnection.ISettings
): Promise<T> {
  return requestAPI<T>(
    endPoint,
    { method: 'POST', body: JSON.stringify(body) },
    settings
  );
}

function query(params: Record<string, string>): string {
  return '?' + new URLSearchParams(params).toString();
}

/** The REST API bound to one server. */
export class KalePyAPI {
  constructor(readonly settings?: ServerConnection.ISettings) {}

  /** Analyse the notebook at `path`; `notebook` is the live (unsaved) content. */
  analyse(path: string, notebook?: unknown): Promise<IAnalysis> {
    return post('analyse', { path, notebook }, this.settings);
  }

  compile(path: string, params: Params = {}): Promise<ICompiled> {
    return post('compile', { path, params }, this.settings);
  }

  startRun(
    path: string,
    params: Params = {},
    only?: string[],
    from?: string
  ): Promise<{ run_id: string; run_dir: string }> {
    return post('runs', { path, params, only, from }, this.settings);
  }

  listRuns(path: string): Promise<IRunSummary[]> {
    return requestAPI('runs' + query({ path }), {}, this.settings);
  }

  getRun(path: string, runId: string): Promise<IRun> {
    return requestAPI(
      `runs/${encodeURIComponent(runId)}` + query({ path }),
      {},
      this.settings
    );
  }

  cancelRun(path: string, runId: string): Promise<IRun> {
    return post(
      `runs/${encodeURIComponent(runId)}/cancel`,
      { path },
      this.settings
    );
  }

  getKfpRun(
    runId: string,
    options: { host?: string; token?: string }
  ): Promise<IKfpRunStatus> {
    return requestAPI(
      `kfp-runs/${encodeURIComponent(runId)}` +
        (options.host ? query({ host: options.host }) : ''),
      options.token ? { headers: { 'X-KFP-Token': options.token } } : {},
      this.settings
    );
  }

  startTune(path: string, request: ITuneRequest): Promise<{ tune_id: string }> {
    return post('tunes', { path, ...request }, this.settings);
  }

  getTune(path: string, tuneId: string): Promise<ITune> {
    return requestAPI(
      `tunes/${encodeURIComponent(tuneId)}` + query({ path }),
      {},
      this.settings
    );
  }

  getTuneReport(path: string, tuneId: string): Promise<string> {
    return requestAPI(
      `tunes/${encodeURIComponent(tuneId)}/report` + query({ path }),
      { as: 'text' },
      this.settings
    );
  }

  getLog(path: string, runId: string, step: string): Promise<string> {
    return requestAPI(
      `runs/${encodeURIComponent(runId)}/logs/${encodeURIComponent(step)}` +
        query({ path }),
      { as: 'text' },
      this.settings
    );
  }

  getReport(path: string, runId: string, step: string): Promise<string> {
    return requestAPI(
      `runs/${encodeURIComponent(runId)}/report/${encodeURIComponent(step)}` +
        query({ path }),
      { as: 'text' },
      this.settings
    );
  }

  submit(
    path: string,
    options: {
      host?: string;
      experiment?: string;
      params?: Params;
      token?: string;
      /** A cron schedule: a recurring run instead of one run. */
      schedule?: string;
      max_concurrency?: number;
    }
  ): Promise<ISubmitted> {
    return post('submit', { path, ...options }, this.settings);
  }

  startServing(path: string): Promise<ILocalServing> {
    return post('serve', { path }, this.settings);
  }

  getLocalServing(path: string): Promise<{ serving: ILocalServing | null }> {
    return requestAPI('serve' + query({ path }), {}, this.settings);
  }

  stopServing(path: string): Promise<{ stopped: ILocalServing | null }> {
    return post('serve/stop', { path }, this.settings);
  }

  getServing(path: string): Promise<IServingStatus> {
    return requestAPI('serving' + query({ path }), {}, this.settings);
  }

  listExperiments(host?: string): Promise<{ id: string; name: string }[]> {
    return requestAPI(
      'experiments' + (host ? query({ host }) : ''),
      {},
      this.settings
    );
  }

  listPodDefaults(): Promise<IPodDefaults> {
    return requestAPI('poddefaults', {}, this.settings);
  }

  verify(path: string, params: Params = {}): Promise<IVerifyResult> {
    return post('verify', { path, params }, this.settings);
  }

  listVolumes(): Promise<IVolumes> {
    return requestAPI('volumes', {}, this.settings);
  }
}

/**
 * The panel's run state: past runs, reopening one, cancel, and following a
 * submitted KFP run — with a fake notebook and a fake server API.
 */
import { Signal } from '@lumino/signaling';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { IKfpRunStatus, IRun, IRunSummary, KalePyAPI } from '../api';
import { PipelineModel } from '../model';

function fakeTracker(path: string): INotebookTracker {
  const cells = { length: 0, changed: new Signal({}), get: () => undefined };
  const model = {
    cells,
    contentChanged: new Signal({}),
    metadataChanged: new Signal({}),
    getMetadata: () => ({ pipeline_name: 'p' }),
    toJSON: () => ({ cells: [], metadata: {} })
  };
  const panel = {
    context: { localPath: path, ready: Promise.resolve(), save: async () => undefined },
    model,
    content: { widgets: [], activeCell: null },
    disposed: new Signal({})
  } as unknown as NotebookPanel;
  return {
    currentWidget: panel,
    currentChanged: new Signal({}),
    activeCellChanged: new Signal({})
  } as unknown as INotebookTracker;
}

function run(id: string, status: IRun['status']): IRun {
  return { run_id: id, status, steps: {}, metrics: {} };
}

function summary(id: string, status: IRunSummary['status']): IRunSummary {
  return { run_id: id, status, started: null, ended: null, duration: null, params: {}, metrics: {} };
}

class FakeAPI {
  calls: string[] = [];
  served: { variable: string; name: string }[] | undefined = undefined;
  runs: IRunSummary[] = [summary('r2', 'succeeded'), summary('r1', 'failed')];
  states: IRun[] = [];
  kfpStates: string[] = [];

  async analyse(): Promise<unknown> {
    return { steps: [], edges: [], levels: [], parameters: [], metrics: [], diagnostics: [],
             pipeline: { name: null, experiment: null, description: null } };
  }
  async listRuns(path: string): Promise<IRunSummary[]> {
    this.calls.push(`list ${path}`);
    return this.runs;
  }
  async getRun(path: string, id: string): Promise<IRun> {
    this.calls.push(`get ${id}`);
    // the last state given stays until the test replaces it
    const next = this.states.length > 1 ? this.states.shift() : this.states[0];
    return next ?? run(id, 'succeeded');
  }
  async cancelRun(path: string, id: string): Promise<IRun> {
    this.calls.push(`cancel ${id}`);
    return run(id, 'running');
  }
  async submit(): Promise<unknown> {
    this.calls.push('submit');
    return { run_id: 'k1', run_url: 'http://kfp/#/runs/k1', pipeline_id: 'p', version_id: 'v',
             experiment_id: 'e', served: this.served };
  }
  serving: unknown = null;
  async startServing(path: string): Promise<unknown> {
    this.calls.push(`serve ${path}`);
    this.serving = { url: 'http://127.0.0.1:9/v2/models/model/infer', port: 9, pid: 7,
                     name: 'model', variable: 'model', step: 'train', run_id: 'r2',
                     started: 't' };
    return this.serving;
  }
  async getLocalServing(path: string): Promise<unknown> {
    this.calls.push(`local serving ${path}`);
    return { serving: this.serving };
  }
  async stopServing(path: string): Promise<unknown> {
    this.calls.push(`stop serving ${path}`);
    const stopped = this.serving;
    this.serving = null;
    return { stopped };
  }
  async getServing(path: string): Promise<unknown> {
    this.calls.push(`serving ${path}`);
    return { namespace: 'team-a', services: [{ variable: 'model', name: 'model', state: 'ready',
             url: 'http://model.team-a.example.com/v2/models/model/infer', message: '' }] };
  }
  async getKfpRun(id: string, options: { host?: string }): Promise<IKfpRunStatus> {
    this.calls.push(`kfp ${id} ${options.host}`);
    const state = this.kfpStates.shift() ?? 'SUCCEEDED';
    return { run_id: id, state, failed_step: state === 'FAILED' ? 'train' : null, error: null };
  }
}

async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) {
    await new Promise(resolve => setTimeout(resolve, 0));
  }
}

describe('PipelineModel runs', () => {
  let api: FakeAPI;
  let model: PipelineModel;

  beforeEach(async () => {
    api = new FakeAPI();
    model = new PipelineModel(fakeTracker('dir/nb.ipynb'), api as unknown as KalePyAPI, {
      runMs: 0,
      kfpMs: 0
    });
    await settle();
  });

  afterEach(() => model.dispose());

  it('lists the past runs of the notebook when it opens', () => {
    expect(api.calls).toContain('list dir/nb.ipynb');
    expect(model.state.runs.map(r => r.run_id)).toEqual(['r2', 'r1']);
  });

  it('reopens a finished run', async () => {
    api.states = [run('r1', 'failed')];
    await model.openRun('r1');
    expect(model.state.run.result?.run_id).toBe('r1');
    expect(model.state.run.result?.status).toBe('failed');
    expect(model.state.run.busy).toBe(false);
  });

  it('follows a reopened run that is still running, and cancels it', async () => {
    api.states = [run('r3', 'running')];
    const opening = model.openRun('r3');
    await settle();
    expect(model.state.run.busy).toBe(true);
    await model.cancelRun();
    expect(api.calls).toContain('cancel r3');
    api.states = [run('r3', 'cancelled')];
    await opening;
    expect(model.state.run.result?.status).toBe('cancelled');
    expect(model.state.run.busy).toBe(false);
  });

  it('does not cancel a run that is not running', async () => {
    await model.openRun('r2');
    await model.cancelRun();
    expect(api.calls.filter(c => c.startsWith('cancel'))).toEqual([]);
  });

  it('follows a submitted run until it ends, naming the failed step', async () => {
    api.kfpStates = ['PENDING', 'RUNNING', 'FAILED', 'SUCCEEDED'];
    await model.submit({ host: 'http://kfp', experiment: '', token: '', params: {} });
    expect(api.calls.filter(c => c.startsWith('kfp'))).toEqual([
      'kfp k1 http://kfp',
      'kfp k1 http://kfp',
      'kfp k1 http://kfp'
    ]);
    expect(model.state.kfpRun).toMatchObject({ state: 'FAILED', failed_step: 'train' });
    // a failed run deployed nothing: the served models are not looked up
    expect(api.calls.filter(c => c.startsWith('serving'))).toEqual([]);
  });

  it('reads the served models once a submitted run has succeeded', async () => {
    api.served = [{ variable: 'model', name: 'model' }];
    api.kfpStates = ['RUNNING', 'SUCCEEDED'];
    await model.submit({ host: 'http://kfp', experiment: '', token: '', params: {} });
    expect(api.calls.filter(c => c.startsWith('serving'))).toEqual(['serving dir/nb.ipynb']);
    expect(model.state.serving.result?.services[0]).toMatchObject({
      state: 'ready',
      url: 'http://model.team-a.example.com/v2/models/model/infer'
    });
    await model.refreshServing();
    expect(api.calls.filter(c => c.startsWith('serving'))).toHaveLength(2);
  });

  it('asks whether the notebook is being served when it opens', () => {
    expect(api.calls).toContain('local serving dir/nb.ipynb');
    expect(model.state.serve.result).toBeNull();
  });

  it('serves locally and stops serving', async () => {
    await model.serveLocally();
    expect(model.state.serve.result?.url).toBe('http://127.0.0.1:9/v2/models/model/infer');
    expect(model.state.serve.busy).toBe(false);
    await model.stopServing();
    expect(api.calls).toContain('stop serving dir/nb.ipynb');
    expect(model.state.serve.result).toBeNull();
  });

  it('does not look for served models when the pipeline serves none', async () => {
    await model.submit({ host: 'http://kfp', experiment: '', token: '', params: {} });
    expect(model.state.kfpRun?.state).toBe('SUCCEEDED');
    expect(api.calls.filter(c => c.startsWith('serving'))).toEqual([]);
  });
});

/**
 * State behind the Pipeline panel, for the notebook that is active in the shell.
 *
 * It follows the active notebook, reads and writes its tags and settings,
 * re-analyses it on the server shortly after each change (sending the live,
 * possibly unsaved content), marks the cells the diagnostics concern, and runs,
 * compiles and submits it. The panel renders it and re-renders on `changed`.
 */
import { ICellModel } from '@jupyterlab/cells';
import { INotebookModel, INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Debouncer } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';
import {
  IAnalysis,
  ICompiled,
  IDiagnostic,
  IKfpRunStatus,
  ILocalServing,
  IRun,
  IRunSummary,
  IServingStatus,
  ISubmitted,
  ITune,
  ITuneRequest,
  IVerifyResult,
  KalePyAPI,
  Params
} from './api';
import { diagnosticsByCell, markCell, unmarkCell } from './diagnostics';
import { HIGHLIGHT_CLASS, cellLabels, labelCell, unlabelCell } from './cellsteps';
import {
  INotebookSettings,
  METADATA_KEY,
  defaultSettings,
  readSettings,
  writeSettings
} from './settings';
import { ICellTags, writeCellTags } from './tags';
import { KalePyRequestError } from './request';

/** How long the notebook must stay unchanged before it is re-analysed. */
export const ANALYSE_DELAY_MS = 500;
/** How often a running local run is polled. */
export const RUN_POLL_MS = 1000;
/** Consecutive failed polls after which the panel stops following a run. */
const MAX_POLL_FAILURES = 5;

/** The outcome of a button action: what the panel shows under it. */
export interface IActionState<T> {
  busy: boolean;
  result: T | null;
  error: string | null;
  diagnostics: IDiagnostic[];
}

function idle<T>(): IActionState<T> {
  return { busy: false, result: null, error: null, diagnostics: [] };
}

/** Per-notebook state that survives switching to another notebook and back. */
interface INotebookState {
  analysis: IAnalysis | null;
  analysisError: string | null;
  run: IActionState<IRun>;
  compile: IActionState<ICompiled>;
  submit: IActionState<ISubmitted>;
  /** Past local runs of the notebook, newest first. */
  runs: IRunSummary[];
  /** The submitted KFP run's status, polled after a submit. */
  kfpRun: IKfpRunStatus | null;
  /** The local tuning started from the panel, followed while it runs. */
  tune: IActionState<ITune>;
  /** The last `nb2pipe verify` of the notebook: kernel against pipeline. */
  verify: IActionState<IVerifyResult>;
  /** The served models' InferenceServices, read once a submitted run has ended. */
  serving: IActionState<IServingStatus>;
  /** The notebook's local model server, if the panel started one (result null: none). */
  serve: IActionState<ILocalServing>;
}

function freshState(): INotebookState {
  return {
    analysis: null,
    analysisError: null,
    run: idle(),
    compile: idle(),
    submit: idle(),
    runs: [],
    kfpRun: null,
    tune: idle(),
    verify: idle(),
    serving: idle(),
    serve: idle()
  };
}

/** How often a submitted KFP run's status is polled. */
export const KFP_POLL_MS = 5000;
const KFP_DONE = new Set(['SUCCEEDED', 'FAILED', 'CANCELED', 'CANCELLED', 'SKIPPED']);

/** The notebook content the analysis needs: outputs are dropped (they can be large). */
export function notebookForAnalysis(model: INotebookModel): unknown {
  const nb = model.toJSON() as { cells?: Record<string, unknown>[] };
  return {
    ...nb,
    cells: (nb.cells ?? []).map(cell =>
      cell.cell_type === 'code'
        ? { ...cell, outputs: [], execution_count: null }
        : cell
    )
  };
}

export class PipelineModel {
  constructor(
    readonly tracker: INotebookTracker,
    readonly api: KalePyAPI,
    /** How often runs are polled (tests poll faster). */
    private readonly _poll: { runMs: number; kfpMs: number } = {
      runMs: RUN_POLL_MS,
      kfpMs: KFP_POLL_MS
    }
  ) {
    this._debouncer = new Debouncer(() => this.analyseNow(), ANALYSE_DELAY_MS);
    tracker.currentChanged.connect(this._onCurrentChanged, this);
    tracker.activeCellChanged.connect(this._emit, this);
    this._follow(tracker.currentWidget);
  }

  /** Emitted whenever anything the panel shows may have changed. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Emitted with the cell index when a cell's step label is clicked. */
  get labelClicked(): ISignal<this, number> {
    return this._labelClicked;
  }

  /** The step whose cells are highlighted in the notebook, if any. */
  get selectedStep(): string | null {
    return this._selectedStep;
  }

  get notebook(): NotebookPanel | null {
    return this._notebook;
  }

  /** The notebook's contents-manager path (relative to the server root), or ''. */
  get path(): string {
    return this._notebook?.context.localPath ?? '';
  }

  get state(): Readonly<INotebookState> {
    return this._state(this.path);
  }

  get analysing(): boolean {
    return this._analysing;
  }

  /** The notebook settings; null when the pipeline is not enabled for the notebook. */
  get settings(): INotebookSettings | null {
    return readSettings(this._notebook?.model?.getMetadata(METADATA_KEY));
  }

  get enabled(): boolean {
    return this.settings !== null;
  }

  /** Turn the notebook into a pipeline notebook (Kale's metadata key, default values). */
  enable(): void {
    const model = this._notebook?.model;
    if (model && !this.enabled) {
      this.setSettings(defaultSettings(this.path));
    }
  }

  setSettings(settings: INotebookSettings): void {
    const model = this._notebook?.model;
    if (model) {
      const raw = model.getMetadata(METADATA_KEY);
      model.setMetadata(METADATA_KEY, writeSettings(raw, settings));
    }
  }

  get activeCellIndex(): number {
    const content = this._notebook?.content;
    return content && content.activeCell ? content.activeCellIndex : -1;
  }

  /** The tags of every cell, in notebook order. */
  allCellTags(): string[][] {
    const cells = this._notebook?.model?.cells;
    const out: string[][] = [];
    for (let i = 0; cells && i < cells.length; i++) {
      out.push(tagsOf(cells.get(i)));
    }
    return out;
  }

  cellType(index: number): string | null {
    const cells = this._notebook?.model?.cells;
    return cells && index >= 0 && index < cells.length
      ? cells.get(index).type
      : null;
  }

  /** Rewrite the panel's tags of one cell; all other tags stay as they are. */
  setCellTags(index: number, tags: ICellTags): void {
    const cells = this._notebook?.model?.cells;
    if (!cells || index < 0 || index >= cells.length) {
      return;
    }
    const cell = cells.get(index);
    const next = writeCellTags(tagsOf(cell), tags);
    // An empty list is removed rather than stored, as JupyterLab's tag editor does.
    cell.setMetadata('tags', next.length ? next : undefined);
  }

  /** Make a cell the active one and scroll it into view. */
  selectCell(index: number): void {
    const content = this._notebook?.content;
    if (content && index >= 0 && index < content.widgets.length) {
      content.activeCellIndex = index;
      void content.scrollToItem(index);
    }
  }

  /** Re-analyse soon; a burst of edits triggers one request. */
  analyseSoon(): void {
    void this._debouncer.invoke();
  }

  /** Analyse the live notebook now (skipped when unchanged since the last time). */
  async analyseNow(force = false): Promise<void> {
    const panel = this._notebook;
    const model = panel?.model;
    if (!panel || !model || !this.enabled) {
      this._clearMarks(panel);
      return;
    }
    const path = this.path;
    const notebook = notebookForAnalysis(model);
    const key = path + '\n' + JSON.stringify(notebook);
    if (!force && key === this._lastAnalysed) {
      return;
    }
    this._lastAnalysed = key;
    const ticket = ++this._ticket;
    this._analysing = true;
    this._emit();
    const state = this._state(path);
    try {
      const analysis = await this.api.analyse(path, notebook);
      if (ticket !== this._ticket) {
        return; // a newer analysis is on its way
      }
      state.analysis = analysis;
      state.analysisError = null;
    } catch (error) {
      if (ticket !== this._ticket) {
        return;
      }
      state.analysisError = (error as Error).message;
      // A notebook kale_py cannot read at all still gets its diagnostics shown.
      if (error instanceof KalePyRequestError && error.diagnostics.length) {
        state.analysis = emptyAnalysis(error.diagnostics);
      }
      this._lastAnalysed = ''; // try again on the next change
    } finally {
      if (ticket === this._ticket) {
        this._analysing = false;
      }
    }
    this.markCells();
    this._emit();
  }

  /** Put the current diagnostics on the notebook's cells. */
  markCells(): void {
    const panel = this._notebook;
    if (!panel) {
      return;
    }
    const analysis = this.enabled ? this.state.analysis : null;
    const cells = panel.content.widgets;
    const byCell = diagnosticsByCell(analysis?.diagnostics ?? [], cells.length);
    cells.forEach((cell, index) => markCell(cell.node, byCell.get(index) ?? []));
    const labels = analysis
      ? cellLabels(
          analysis.steps,
          this.allCellTags(),
          cells.map(c => c.model.type)
        )
      : new Map();
    const highlighted = new Set(
      analysis?.steps.find(s => s.name === this._selectedStep)?.cells.map(c => c - 1) ?? []
    );
    cells.forEach((cell, index) => {
      labelCell(cell.node, labels.get(index), () => this._labelClicked.emit(index));
      cell.node.classList.toggle(HIGHLIGHT_CLASS, highlighted.has(index));
    });
  }

  /**
   * Highlight the cells of step `name` in the notebook and scroll to the first
   * (null clears the highlight).
   */
  highlightStep(name: string | null): void {
    this._selectedStep = name;
    this.markCells();
    const step = this.state.analysis?.steps.find(s => s.name === name);
    if (step && step.cells.length) {
      this.selectCell(step.cells[0] - 1);
    }
    this._emit();
  }

  /** Read the list of past local runs of the notebook. */
  async refreshRuns(): Promise<void> {
    const path = this.path;
    if (!path) {
      return;
    }
    const state = this._state(path);
    try {
      state.runs = await this.api.listRuns(path);
    } catch {
      state.runs = [];
    }
    this._emit();
  }

  /** Show a past run (its step status, logs, reports); follow it while it runs. */
  async openRun(runId: string): Promise<void> {
    const path = this.path;
    const state = this._state(path);
    if (!path || state.run.busy) {
      return;
    }
    state.run = { ...idle(), busy: false };
    try {
      const run = await this.api.getRun(path, runId);
      state.run.result = run;
      this._emit();
      if (run.status === 'running') {
        state.run.busy = true;
        this._emit();
        await this._followRun(path, runId, state);
        state.run.busy = false;
      }
    } catch (error) {
      setFailure(state.run, error);
    }
    this._emit();
    void this.refreshRuns();
  }

  /** Start a local tuning and follow its trials until it ends. */
  async startTune(request: ITuneRequest): Promise<void> {
    const path = this.path;
    const state = this._state(path);
    if (!path || state.tune.busy) {
      return;
    }
    state.tune = { ...idle(), busy: true };
    this._emit();
    try {
      await this._notebook?.context.save();
      const { tune_id } = await this.api.startTune(path, request);
      let failures = 0;
      for (;;) {
        try {
          state.tune.result = await this.api.getTune(path, tune_id);
          failures = 0;
        } catch (error) {
          if (++failures >= MAX_POLL_FAILURES) {
            throw error;
          }
        }
        this._emit();
        if (this._disposed || (state.tune.result && state.tune.result.status !== 'running')) {
          break;
        }
        await new Promise(resolve => setTimeout(resolve, this._poll.runMs));
      }
    } catch (error) {
      setFailure(state.tune, error);
    }
    state.tune.busy = false;
    this._emit();
  }

  /** Stop the run the panel shows: its step processes end, its status becomes cancelled. */
  async cancelRun(): Promise<void> {
    const path = this.path;
    const run = this._state(path).run.result;
    if (!path || !run || run.status !== 'running') {
      return;
    }
    try {
      await this.api.cancelRun(path, run.run_id);
    } catch (error) {
      setFailure(this._state(path).run, error);
      this._emit();
    }
  }

  /** Save the notebook, start a local run and follow it until it ends. */
  async runLocally(params: Params): Promise<void> {
    const path = this.path;
    const state = this._state(path);
    if (!path || state.run.busy) {
      return;
    }
    state.run = { ...idle(), busy: true };
    this._emit();
    try {
      // The run reads the file: unsaved edits would silently not be part of it.
      await this._notebook?.context.save();
      const { run_id } = await this.api.startRun(path, params);
      state.run.result = {
        run_id,
        status: 'running',
        steps: {},
        metrics: {}
      };
      this._emit();
      void this.refreshRuns();
      await this._followRun(path, run_id, state);
    } catch (error) {
      setFailure(state.run, error);
    }
    state.run.busy = false;
    this._emit();
    void this.refreshRuns();
  }

  /** Run the notebook in a kernel and as the pipeline, and compare every variable. */
  async verify(params: Params): Promise<void> {
    await this._action('verify', async path => {
      await this._notebook?.context.save();
      return this.api.verify(path, params);
    });
  }

  async compile(params: Params): Promise<void> {
    await this._action('compile', async path => {
      await this._notebook?.context.save();
      return this.api.compile(path, params);
    });
  }

  async submit(options: {
    host: string;
    experiment: string;
    token: string;
    params: Params;
    schedule?: string;
  }): Promise<void> {
    const path = this.path;
    this._state(path).kfpRun = null;
    this._state(path).serving = idle();
    await this._action('submit', async path => {
      await this._notebook?.context.save();
      return this.api.submit(path, {
        host: options.host || undefined,
        experiment: options.experiment || undefined,
        token: options.token || undefined,
        params: options.params,
        schedule: options.schedule || undefined
      });
    });
    const submitted = this._state(path).submit.result;
    if (submitted && !submitted.recurring_run_id) {
      await this._followKfpRun(path, submitted.run_id, options);
      const ended = this._state(path).kfpRun?.state === 'SUCCEEDED';
      if (submitted.served?.length && ended && this.path === path) {
        await this.refreshServing();
      }
    }
  }

  /** Serve the model a local run saved, on this machine (one server per notebook). */
  async serveLocally(): Promise<void> {
    await this._action('serve', async path => {
      await this._notebook?.context.save();
      return this.api.startServing(path);
    });
  }

  /** Stop the notebook's local model server. */
  async stopServing(): Promise<void> {
    const path = this.path;
    const state = this._state(path);
    if (!path || state.serve.busy) {
      return;
    }
    const action: IActionState<ILocalServing> = { ...state.serve, busy: true, error: null };
    state.serve = action;
    this._emit();
    try {
      await this.api.stopServing(path);
      state.serve = idle();
    } catch (error) {
      action.busy = false;
      setFailure(action, error);
    }
    this._emit();
  }

  /** Whether a local model server of the notebook is running (one the panel started). */
  async refreshLocalServing(): Promise<void> {
    const path = this.path;
    if (!path) {
      return;
    }
    const state = this._state(path);
    try {
      const answer = await this.api.getLocalServing(path);
      if (!state.serve.busy) {
        state.serve = { ...idle(), result: answer.serving };
      }
    } catch {
      // no server reachable: nothing to show
    }
    this._emit();
  }

  /** Read the served models' InferenceServices (their state and URL) from the cluster. */
  async refreshServing(): Promise<void> {
    await this._action('serving', path => this.api.getServing(path));
  }

  /** Poll the submitted run on the KFP endpoint until it ends. */
  private async _followKfpRun(
    path: string,
    runId: string,
    options: { host: string; token: string }
  ): Promise<void> {
    const state = this._state(path);
    let failures = 0;
    for (;;) {
      if (this._disposed || state.submit.result?.run_id !== runId) {
        return;
      }
      try {
        state.kfpRun = await this.api.getKfpRun(runId, {
          host: options.host || undefined,
          token: options.token || undefined
        });
        failures = 0;
      } catch (error) {
        if (++failures >= MAX_POLL_FAILURES) {
          state.kfpRun = {
            run_id: runId,
            state: 'UNKNOWN',
            failed_step: null,
            error: (error as Error).message
          };
          this._emit();
          return;
        }
      }
      this._emit();
      if (state.kfpRun && KFP_DONE.has(state.kfpRun.state)) {
        return;
      }
      await new Promise(resolve => setTimeout(resolve, this._poll.kfpMs));
    }
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this._follow(null);
    this._debouncer.dispose();
    Signal.clearData(this);
  }

  private async _followRun(
    path: string,
    runId: string,
    state: INotebookState
  ): Promise<void> {
    let failures = 0;
    for (;;) {
      await new Promise(resolve => setTimeout(resolve, this._poll.runMs));
      if (this._disposed) {
        return;
      }
      let run: IRun;
      try {
        run = await this.api.getRun(path, runId);
        failures = 0;
      } catch (error) {
        // A busy server or a status file caught mid-write: only give up when it persists.
        if (++failures >= MAX_POLL_FAILURES) {
          throw error;
        }
        continue;
      }
      state.run.result = run;
      this._emit();
      if (run.status !== 'running') {
        return;
      }
    }
  }

  private async _action<K extends 'compile' | 'submit' | 'verify' | 'serving' | 'serve'>(
    kind: K,
    call: (path: string) => Promise<NonNullable<INotebookState[K]['result']>>
  ): Promise<void> {
    const path = this.path;
    const state = this._state(path);
    if (!path || state[kind].busy) {
      return;
    }
    const action = { ...idle(), busy: true } as INotebookState[K];
    state[kind] = action;
    this._emit();
    try {
      action.result = await call(path);
    } catch (error) {
      setFailure(action, error);
    }
    action.busy = false;
    this._emit();
  }

  private _state(path: string): INotebookState {
    let state = this._states.get(path);
    if (!state) {
      state = freshState();
      this._states.set(path, state);
    }
    return state;
  }

  private _onCurrentChanged(): void {
    this._follow(this.tracker.currentWidget);
  }

  /** Listen to `panel`'s notebook (and stop listening to the previous one). */
  private _follow(panel: NotebookPanel | null): void {
    const old = this._notebook;
    if (old === panel) {
      return;
    }
    if (old) {
      const model = old.model;
      if (model) {
        model.contentChanged.disconnect(this._onContentChanged, this);
        model.metadataChanged.disconnect(this._onContentChanged, this);
        model.cells.changed.disconnect(this._hookCells, this);
      }
      this._hooked.forEach(cell =>
        cell.metadataChanged.disconnect(this._onContentChanged, this)
      );
      old.disposed.disconnect(this._onNotebookDisposed, this);
    }
    this._hooked.clear();
    this._notebook = panel;
    this._lastAnalysed = '';
    this._ticket++; // answers for the previous notebook are dropped
    this._analysing = false;
    this._emit();
    if (!panel) {
      return;
    }
    panel.disposed.connect(this._onNotebookDisposed, this);
    void panel.context.ready.then(() => {
      if (this._notebook !== panel || !panel.model) {
        return;
      }
      const model = panel.model;
      model.contentChanged.connect(this._onContentChanged, this);
      model.metadataChanged.connect(this._onContentChanged, this);
      model.cells.changed.connect(this._hookCells, this);
      this._hookCells();
      this.markCells();
      void this.analyseNow();
      void this.refreshRuns();
      void this.refreshLocalServing();
    });
  }

  private _onNotebookDisposed(): void {
    this._follow(null);
  }

  /** Cell metadata (tags) changes do not all reach the notebook's contentChanged. */
  private _hookCells(): void {
    const cells = this._notebook?.model?.cells;
    for (let i = 0; cells && i < cells.length; i++) {
      const cell = cells.get(i);
      if (!this._hooked.has(cell)) {
        cell.metadataChanged.connect(this._onContentChanged, this);
        this._hooked.add(cell);
      }
    }
    this._onContentChanged();
  }

  private _onContentChanged(): void {
    this._emit();
    this.analyseSoon();
  }

  private _clearMarks(panel: NotebookPanel | null | undefined): void {
    panel?.content.widgets.forEach(cell => {
      unmarkCell(cell.node);
      unlabelCell(cell.node);
      cell.node.classList.remove(HIGHLIGHT_CLASS);
    });
  }

  private _emit(): void {
    if (!this._disposed) {
      this._changed.emit();
    }
  }

  private _changed = new Signal<this, void>(this);
  private _labelClicked = new Signal<this, number>(this);
  private _selectedStep: string | null = null;
  private _notebook: NotebookPanel | null = null;
  private _hooked = new Set<ICellModel>();
  private _states = new Map<string, INotebookState>();
  private _debouncer: Debouncer;
  private _lastAnalysed = '';
  private _ticket = 0;
  private _analysing = false;
  private _disposed = false;
}

function tagsOf(cell: ICellModel): string[] {
  const tags = cell.getMetadata('tags');
  return Array.isArray(tags) ? tags.filter(t => typeof t === 'string') : [];
}

function emptyAnalysis(diagnostics: IDiagnostic[]): IAnalysis {
  return {
    pipeline: { name: null, experiment: null, description: null },
    steps: [],
    edges: [],
    levels: [],
    parameters: [],
    metrics: [],
    diagnostics
  };
}

function setFailure(action: IActionState<unknown>, error: unknown): void {
  action.error = (error as Error).message ?? String(error);
  action.diagnostics =
    error instanceof KalePyRequestError ? error.diagnostics : [];
}

/**
 * The "Pipeline" side panel: settings, the selected cell's tags, the step
 * graph, diagnostics, and run / compile / submit, for the active notebook.
 *
 * Rendering only: state and server calls live in PipelineModel.
 */
import * as React from 'react';
import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';
import { IDiagnostic, IPodDefaults, IRun, IRunSummary } from './api';
import { formatDiagnostic } from './diagnostics';
import { GraphView } from './graphview';
import { PipelineModel } from './model';
import { formatParameter, parameterOverrides } from './parameters';
import { INotebookSettings, IVolume } from './settings';
import {
  ICellTags,
  IResources,
  ROLES,
  Role,
  earlierSteps,
  imageProblem,
  isManagedTag,
  parseCellTags,
  quantityProblem,
  stepNameProblem
} from './tags';
import { StepOutputKind } from './logview';
import { formatSeconds, runValues } from './runhistory';
import { defaultSpec, rankTrials, tuneRequest } from './tuneform';

export type OpenStepOutput = (
  runId: string,
  step: string,
  kind: StepOutputKind
) => void;

const ROLE_LABELS: Record<Role, string> = {
  none: 'none (continues the block above)',
  imports: 'imports',
  functions: 'functions',
  'pipeline-parameters': 'pipeline parameters',
  'pipeline-metrics': 'pipeline metrics',
  step: 'step',
  skip: 'skip'
};

export class PipelinePanel extends ReactWidget {
  constructor(
    private readonly model: PipelineModel,
    private readonly openOutput: OpenStepOutput,
    private readonly openGraph: () => void = () => undefined
  ) {
    super();
    this.addClass('kale-py-panel');
  }

  render(): JSX.Element {
    return (
      <UseSignal signal={this.model.changed}>
        {() => (
          <PanelBody
            model={this.model}
            openOutput={this.openOutput}
            openGraph={this.openGraph}
          />
        )}
      </UseSignal>
    );
  }
}

interface IBodyProps {
  model: PipelineModel;
  openOutput: OpenStepOutput;
  openGraph: () => void;
}

function PanelBody({ model, openOutput, openGraph }: IBodyProps): JSX.Element {
  if (!model.notebook) {
    return (
      <div className="kale-py-body">
        <h2 className="kale-py-title">Pipeline</h2>
        <p id="kale-py-no-notebook" className="kale-py-hint">
          Open a notebook to turn it into a pipeline.
        </p>
      </div>
    );
  }
  const settings = model.settings;
  return (
    <div className="kale-py-body">
      <h2 className="kale-py-title">Pipeline</h2>
      <div id="kale-py-notebook" className="kale-py-notebook" title={model.path}>
        {model.path}
      </div>
      {settings ? (
        <PipelineView
          key={model.path}
          model={model}
          openOutput={openOutput}
          openGraph={openGraph}
        />
      ) : (
        <div className="kale-py-enable">
          <p className="kale-py-hint">
            Tag cells as steps and run the notebook as a multi-step pipeline,
            locally or on Kubeflow Pipelines.
          </p>
          <button
            id="kale-py-enable"
            className="jp-mod-styled jp-mod-accept"
            onClick={() => model.enable()}
          >
            Enable pipeline
          </button>
        </div>
      )}
    </div>
  );
}

/** The panel of an enabled notebook; keyed by path, so its inputs are per notebook. */
function PipelineView({ model, openOutput, openGraph }: IBodyProps): JSX.Element {
  const [paramInputs, setParamInputs] = React.useState<Record<string, string>>(
    {}
  );
  const analysis = model.state.analysis;
  const parameters = analysis?.parameters ?? [];
  const inputs: Record<string, string> = {};
  for (const p of parameters) {
    inputs[p.name] = paramInputs[p.name] ?? formatParameter(p.default);
  }
  const { params, errors } = parameterOverrides(parameters, inputs);
  const paramErrors = Object.values(errors);

  return (
    <>
      <SettingsSection model={model} settings={model.settings!} />
      <CellSection model={model} />
      <Section title="Steps" id="kale-py-graph-section">
        <AnalysisStatus model={model} />
        <div className="kale-py-buttons">
          <button
            id="kale-py-open-graph"
            className="jp-mod-styled kale-py-small"
            title="Open the step graph in a tab of its own: pan, zoom, fit"
            onClick={openGraph}
          >
            Open graph
          </button>
        </div>
        <div className="kale-py-graph-box">
          <GraphView
            graph={analysis ?? { steps: [], edges: [], levels: [] }}
            status={runStatus(model.state.run.result)}
            selected={model.selectedStep}
            onSelectStep={name => model.highlightStep(name)}
          />
        </div>
      </Section>
      <Section title="Diagnostics" id="kale-py-diagnostics-section">
        <DiagnosticList
          id="kale-py-diagnostics"
          model={model}
          diagnostics={analysis?.diagnostics ?? []}
          empty="No problems found."
        />
      </Section>
      {parameters.length > 0 && (
        <Section title="Parameters" id="kale-py-parameters-section">
          {parameters.map(p => (
            <label key={p.name} className="kale-py-field">
              <span>
                {p.name} <small>({p.type})</small>
              </span>
              <input
                className="jp-mod-styled kale-py-param"
                data-param={p.name}
                value={inputs[p.name]}
                onChange={e =>
                  setParamInputs({ ...paramInputs, [p.name]: e.target.value })
                }
              />
            </label>
          ))}
          {paramErrors.map(e => (
            <div key={e} className="kale-py-error">
              {e}
            </div>
          ))}
        </Section>
      )}
      <RunSection
        model={model}
        params={params}
        blocked={paramErrors.length > 0}
        openOutput={openOutput}
      />
      <CompileSection model={model} params={params} blocked={paramErrors.length > 0} />
      <VerifySection model={model} params={params} blocked={paramErrors.length > 0} />
      <TuneSection model={model} openOutput={openOutput} />
      {(analysis?.served?.length ?? 0) > 0 && <ServeSection model={model} />}
      <SubmitSection model={model} params={params} blocked={paramErrors.length > 0} />
    </>
  );
}

function Section(props: {
  title: string;
  id: string;
  open?: boolean;
  children: React.ReactNode;
}): JSX.Element {
  return (
    <details className="kale-py-section" id={props.id} open={props.open ?? true}>
      <summary>{props.title}</summary>
      <div className="kale-py-section-body">{props.children}</div>
    </details>
  );
}

/**
 * A text input whose value is committed while it is valid; an invalid draft
 * stays in the field with its problem shown, until fixed or replaced from
 * outside (another cell selected, undo).
 */
function DraftInput(props: {
  id: string;
  label: string;
  value: string;
  placeholder?: string;
  problem?: (value: string) => string | null;
  onCommit: (value: string) => void;
}): JSX.Element {
  const [text, setText] = React.useState(props.value);
  const committed = React.useRef(props.value);
  React.useEffect(() => {
    if (props.value !== committed.current) {
      committed.current = props.value;
      setText(props.value);
    }
  }, [props.value]);
  const problem = props.problem?.(text) ?? null;
  return (
    <label className="kale-py-field">
      <span>{props.label}</span>
      <input
        id={props.id}
        className={'jp-mod-styled' + (problem ? ' kale-py-invalid' : '')}
        value={text}
        placeholder={props.placeholder}
        onChange={e => {
          const value = e.target.value;
          setText(value);
          if (!props.problem?.(value)) {
            committed.current = value.trim();
            props.onCommit(value.trim());
          }
        }}
      />
      {problem && <div className="kale-py-error">{problem}</div>}
    </label>
  );
}

function SettingsSection(props: {
  model: PipelineModel;
  settings: INotebookSettings;
}): JSX.Element {
  const { model, settings } = props;
  const [volumeNote, setVolumeNote] = React.useState('');
  const [podDefaults, setPodDefaults] = React.useState<IPodDefaults | null>(null);
  const [podDefaultsNote, setPodDefaultsNote] = React.useState('');
  const listPodDefaults = async () => {
    try {
      const found = await model.api.listPodDefaults();
      setPodDefaults(found);
      setPodDefaultsNote(found.message ?? `${found.poddefaults.length} in ${found.namespace}`);
    } catch (error) {
      setPodDefaultsNote((error as Error).message);
    }
  };
  const togglePodDefault = (name: string, on: boolean) =>
    update({
      poddefaults: on
        ? [...settings.poddefaults.filter(n => n !== name), name]
        : settings.poddefaults.filter(n => n !== name)
    });
  // chosen ones stay listed even when the cluster cannot be asked
  const podDefaultNames = [
    ...(podDefaults?.poddefaults.map(d => d.name) ?? []),
    ...settings.poddefaults.filter(n => !podDefaults?.poddefaults.some(d => d.name === n))
  ];
  const update = (change: Partial<INotebookSettings>) =>
    model.setSettings({ ...settings, ...change });
  const setVolume = (i: number, change: Partial<IVolume>) =>
    update({
      volumes: settings.volumes.map((v, j) => (j === i ? { ...v, ...change } : v))
    });
  const text = (
    id: string,
    label: string,
    key: 'pipeline_name' | 'experiment_name' | 'pipeline_description' | 'base_image' | 'kfp_host',
    placeholder = ''
  ) => (
    <label className="kale-py-field">
      <span>{label}</span>
      <input
        id={id}
        className="jp-mod-styled"
        value={settings[key]}
        placeholder={placeholder}
        onChange={e => update({ [key]: e.target.value })}
      />
    </label>
  );
  const useClusterVolumes = async () => {
    try {
      const found = await model.api.listVolumes();
      if (!found.in_cluster) {
        setVolumeNote('Not running in a Kubeflow notebook pod: add volumes by hand.');
        return;
      }
      update({
        base_image: found.image ?? settings.base_image,
        volumes: found.volumes.map(v => ({
          name: v.claim,
          mount_point: v.mount_point,
          type: 'pvc'
        }))
      });
      setVolumeNote(`Found ${found.volumes.length} volume(s) of this notebook pod.`);
    } catch (error) {
      setVolumeNote((error as Error).message);
    }
  };
  return (
    <Section title="Settings" id="kale-py-settings" open={false}>
      {text('kale-py-pipeline-name', 'Pipeline name', 'pipeline_name')}
      {text('kale-py-experiment-name', 'Experiment', 'experiment_name')}
      {text('kale-py-description', 'Description', 'pipeline_description')}
      {text('kale-py-base-image', 'Base image', 'base_image', "the notebook's image")}
      {text('kale-py-kfp-host', 'KFP host', 'kfp_host', 'from the environment')}
      <label className="kale-py-checkbox">
        <input
          id="kale-py-caching"
          type="checkbox"
          checked={settings.enable_caching}
          onChange={e => update({ enable_caching: e.target.checked })}
        />
        Cache step results
      </label>
      <div className="kale-py-poddefaults" id="kale-py-poddefaults">
        <span>PodDefaults of the steps</span>
        {podDefaultNames.map(name => {
          const found = podDefaults?.poddefaults.find(d => d.name === name);
          return (
            <label key={name} className="kale-py-checkbox" title={found?.description ?? ''}>
              <input
                type="checkbox"
                className="kale-py-poddefault"
                data-poddefault={name}
                checked={settings.poddefaults.includes(name)}
                onChange={e => togglePodDefault(name, e.target.checked)}
              />
              {name}
              {found?.description ? <small> — {found.description}</small> : null}
            </label>
          );
        })}
        <div className="kale-py-buttons">
          <button
            id="kale-py-list-poddefaults"
            className="jp-mod-styled kale-py-small"
            onClick={() => void listPodDefaults()}
          >
            List the namespace's PodDefaults
          </button>
        </div>
        {podDefaultsNote && <div className="kale-py-hint">{podDefaultsNote}</div>}
      </div>
      <div className="kale-py-volumes">
        <span>Volumes</span>
        {settings.volumes.map((v, i) => (
          <div key={i} className="kale-py-volume">
            <input
              className="jp-mod-styled"
              placeholder="PVC name"
              value={v.name}
              onChange={e => setVolume(i, { name: e.target.value })}
            />
            <input
              className={
                'jp-mod-styled' +
                (v.mount_point && !v.mount_point.startsWith('/') ? ' kale-py-invalid' : '')
              }
              placeholder="/mount/point"
              value={v.mount_point}
              onChange={e => setVolume(i, { mount_point: e.target.value })}
            />
            <button
              className="jp-mod-styled kale-py-small"
              title="Remove this volume"
              onClick={() =>
                update({ volumes: settings.volumes.filter((_, j) => j !== i) })
              }
            >
              ✕
            </button>
          </div>
        ))}
        <div className="kale-py-buttons">
          <button
            className="jp-mod-styled kale-py-small"
            onClick={() =>
              update({
                volumes: [...settings.volumes, { name: '', mount_point: '', type: 'pvc' }]
              })
            }
          >
            Add volume
          </button>
          <button
            className="jp-mod-styled kale-py-small"
            onClick={() => void useClusterVolumes()}
          >
            Use this pod's volumes
          </button>
        </div>
        {volumeNote && <div className="kale-py-hint">{volumeNote}</div>}
      </div>
    </Section>
  );
}

function CellSection({ model }: { model: PipelineModel }): JSX.Element {
  const index = model.activeCellIndex;
  const allTags = model.allCellTags();
  if (index < 0 || index >= allTags.length) {
    return (
      <Section title="Cell" id="kale-py-cell">
        <p className="kale-py-hint">Select a cell to tag it.</p>
      </Section>
    );
  }
  const tags = allTags[index];
  const parsed = parseCellTags(tags);
  const commit = (change: Partial<ICellTags>) =>
    model.setCellTags(index, { ...parsed, ...change });
  const isCode = model.cellType(index) === 'code';
  const choices = earlierSteps(allTags, index, parsed.step);
  // prev: tags that are no longer valid stay visible, so they can be removed
  const prevOptions = [...choices, ...parsed.prev.filter(p => !choices.includes(p))];

  return (
    <Section title={`Cell ${index + 1}`} id="kale-py-cell">
      <div className="kale-py-tags" id="kale-py-cell-tags">
        {tags.length === 0 && <span className="kale-py-hint">no tags</span>}
        {tags.map(t => (
          <span
            key={t}
            className={'kale-py-tag' + (isManagedTag(t) ? '' : ' kale-py-tag-other')}
          >
            {t}
          </span>
        ))}
      </div>
      {!isCode ? (
        <p className="kale-py-hint">Only code cells are part of a pipeline.</p>
      ) : (
        <>
          <label className="kale-py-field">
            <span>Role</span>
            <select
              id="kale-py-role"
              className="jp-mod-styled"
              value={parsed.role}
              onChange={e => {
                const role = e.target.value as Role;
                commit({
                  role,
                  step: role === 'step' ? parsed.step || suggestStepName(allTags, index) : ''
                });
              }}
            >
              {ROLES.map(r => (
                <option key={r} value={r}>
                  {ROLE_LABELS[r]}
                </option>
              ))}
            </select>
          </label>
          {parsed.role === 'step' && (
            <StepSettings
              key={`${model.path}:${index}`}
              parsed={parsed}
              prevOptions={prevOptions}
              validPrev={choices}
              commit={commit}
            />
          )}
        </>
      )}
    </Section>
  );
}

/** `step_N` for cell N, or the first free variant of it. */
function suggestStepName(allTags: string[][], index: number): string {
  const used = new Set(allTags.map(t => parseCellTags(t).step));
  let name = `step_${index + 1}`;
  for (let i = 2; used.has(name); i++) {
    name = `step_${index + 1}_${i}`;
  }
  return name;
}

function StepSettings(props: {
  parsed: ICellTags;
  prevOptions: string[];
  validPrev: string[];
  commit: (change: Partial<ICellTags>) => void;
}): JSX.Element {
  const { parsed, commit } = props;
  // Collapsed unless set: most steps run with the pipeline's defaults.
  const hasResources =
    parsed.image !== '' ||
    [parsed.limits, parsed.requests].some(r => Object.values(r).some(v => v !== ''));
  const resource = (kind: 'limits' | 'requests', field: keyof IResources, label: string) => (
    <DraftInput
      id={`kale-py-${kind === 'limits' ? 'limit' : 'request'}-${field}`}
      label={label}
      value={parsed[kind][field]}
      placeholder={field === 'gpu' ? '0' : field === 'cpu' ? '1' : '2Gi'}
      problem={v => quantityProblem(field, v)}
      onCommit={v => commit({ [kind]: { ...parsed[kind], [field]: v } })}
    />
  );
  return (
    <>
      <DraftInput
        id="kale-py-step-name"
        label="Step name"
        value={parsed.step}
        problem={stepNameProblem}
        onCommit={v => commit({ step: v })}
      />
      <fieldset className="kale-py-prev" id="kale-py-prev">
        <legend>Depends on</legend>
        {props.prevOptions.length === 0 && (
          <span className="kale-py-hint">no earlier steps</span>
        )}
        {props.prevOptions.map(name => (
          <label
            key={name}
            className={
              'kale-py-checkbox' +
              (props.validPrev.includes(name) ? '' : ' kale-py-invalid')
            }
          >
            <input
              type="checkbox"
              data-step={name}
              checked={parsed.prev.includes(name)}
              onChange={e =>
                commit({
                  prev: e.target.checked
                    ? [...parsed.prev, name]
                    : parsed.prev.filter(p => p !== name)
                })
              }
            />
            {name}
          </label>
        ))}
      </fieldset>
      <details
        id="kale-py-step-resources"
        className="kale-py-subsection"
        open={hasResources}
      >
        <summary>Resources and image</summary>
        <div className="kale-py-resources">
          <span>Limits</span>
          {resource('limits', 'cpu', 'CPU')}
          {resource('limits', 'memory', 'Memory')}
          {resource('limits', 'gpu', 'GPUs')}
          <span>Requests</span>
          {resource('requests', 'cpu', 'CPU')}
          {resource('requests', 'memory', 'Memory')}
          {resource('requests', 'gpu', 'GPUs')}
        </div>
        <DraftInput
          id="kale-py-image"
          label="Image"
          value={parsed.image}
          placeholder="the pipeline's base image"
          problem={imageProblem}
          onCommit={v => commit({ image: v })}
        />
      </details>
    </>
  );
}

function AnalysisStatus({ model }: { model: PipelineModel }): JSX.Element {
  const { analysis, analysisError } = model.state;
  let text = '';
  if (analysisError) {
    text = `Analysis failed: ${analysisError}`;
  } else if (analysis) {
    const errors = analysis.diagnostics.filter(d => d.severity === 'error').length;
    text =
      `${analysis.steps.length} step(s), ${analysis.edges.length} edge(s)` +
      (errors ? `, ${errors} error(s)` : '');
  } else {
    text = 'Analysing…';
  }
  return (
    <div
      id="kale-py-analysis-status"
      className={'kale-py-status' + (analysisError ? ' kale-py-error' : '')}
      data-busy={model.analysing ? 'true' : 'false'}
    >
      {text}
      {model.analysing && analysis ? ' (updating…)' : ''}
    </div>
  );
}

function DiagnosticList(props: {
  id?: string;
  model: PipelineModel;
  diagnostics: IDiagnostic[];
  empty?: string;
}): JSX.Element | null {
  if (!props.diagnostics.length) {
    return props.empty ? <div className="kale-py-hint">{props.empty}</div> : null;
  }
  return (
    <ul id={props.id} className="kale-py-diagnostics">
      {props.diagnostics.map((d, i) => (
        <li
          key={i}
          className={`kale-py-diagnostic kale-py-${d.severity}`}
          data-severity={d.severity}
          data-code={d.code}
          data-cell={d.cell ?? ''}
          title={d.cell !== null ? 'Select the cell' : undefined}
          onClick={() => d.cell !== null && props.model.selectCell(d.cell - 1)}
        >
          {formatDiagnostic(d)}
        </li>
      ))}
    </ul>
  );
}

export function runStatus(run: IRun | null): Record<string, string> | undefined {
  if (!run) {
    return undefined;
  }
  const out: Record<string, string> = {};
  for (const [name, step] of Object.entries(run.steps)) {
    out[name] = step.status;
  }
  return out;
}

interface IActionProps {
  model: PipelineModel;
  params: Record<string, unknown>;
  blocked: boolean;
}

function ActionError(props: {
  model: PipelineModel;
  error: string | null;
  diagnostics: IDiagnostic[];
}): JSX.Element | null {
  if (!props.error) {
    return null;
  }
  return (
    <div className="kale-py-action-error">
      <div className="kale-py-error">{props.error}</div>
      <DiagnosticList model={props.model} diagnostics={props.diagnostics} />
    </div>
  );
}

function RunSection(props: IActionProps & { openOutput: OpenStepOutput }): JSX.Element {
  const { model } = props;
  const action = model.state.run;
  const run = action.result;
  const order = model.state.analysis?.steps.map(s => s.name) ?? [];
  const stepNames = run
    ? [
        ...order.filter(n => n in run.steps),
        ...Object.keys(run.steps).filter(n => !order.includes(n))
      ]
    : [];
  return (
    <Section title="Run locally" id="kale-py-run-section">
      <div className="kale-py-buttons">
        <button
          id="kale-py-run"
          className="jp-mod-styled jp-mod-accept"
          disabled={action.busy || props.blocked}
          title="Save the notebook and run the pipeline on this machine"
          onClick={() => void model.runLocally(props.params)}
        >
          {action.busy ? 'Running…' : 'Run locally'}
        </button>
        {run && run.status === 'running' && (
          <button
            id="kale-py-cancel"
            className="jp-mod-styled jp-mod-warn"
            title="Stop the run: its steps end, finished steps keep their results"
            onClick={() => void model.cancelRun()}
          >
            Cancel
          </button>
        )}
      </div>
      {run && (
        <div id="kale-py-run-status" className="kale-py-status" data-status={run.status}>
          Run {run.run_id}: <b className={`kale-py-status-${run.status}`}>{run.status}</b>
        </div>
      )}
      {run && stepNames.length > 0 && (
        <ul id="kale-py-run-steps" className="kale-py-run-steps">
          {stepNames.map(name => {
            const step = run.steps[name];
            const ended = step.status !== 'pending' && step.status !== 'running';
            return (
              <li
                key={name}
                className="kale-py-run-step"
                data-step={name}
                data-status={step.status}
              >
                <span className="kale-py-run-step-name">{name}</span>
                <span className={`kale-py-run-step-status kale-py-status-${step.status}`}>
                  {step.status}
                </span>
                {step.status !== 'pending' && step.status !== 'skipped' && (
                  <button
                    className="jp-mod-styled kale-py-small kale-py-open-log"
                    onClick={() => props.openOutput(run.run_id, name, 'log')}
                  >
                    log
                  </button>
                )}
                {ended && step.status !== 'skipped' && (
                  <button
                    className="jp-mod-styled kale-py-small kale-py-open-report"
                    onClick={() => props.openOutput(run.run_id, name, 'report')}
                  >
                    report
                  </button>
                )}
                {step.error && (
                  <div
                    className="kale-py-error kale-py-run-step-error"
                    onClick={() =>
                      step.error?.cell && model.selectCell(step.error.cell - 1)
                    }
                  >
                    {step.error.cell !== null
                      ? `cell ${step.error.cell}` +
                        (step.error.line !== null ? `:${step.error.line}` : '') +
                        ': '
                      : ''}
                    {step.error.message}
                  </div>
                )}
              </li>
            );
          })}
        </ul>
      )}
      <ActionError model={model} error={action.error} diagnostics={action.diagnostics} />
      <RunHistory model={model} current={run?.run_id ?? null} />
    </Section>
  );
}

/** Past local runs of the notebook; a click shows one (graph status, logs, reports). */
function RunHistory(props: { model: PipelineModel; current: string | null }): JSX.Element {
  const runs = props.model.state.runs;
  return (
    <details className="kale-py-history" id="kale-py-history" open={runs.length > 0}>
      <summary>Past runs ({runs.length})</summary>
      {runs.length === 0 ? (
        <div className="kale-py-hint">No runs yet.</div>
      ) : (
        <table className="kale-py-history-table">
          <thead>
            <tr>
              <th>started</th>
              <th>status</th>
              <th>time</th>
              <th>parameters · metrics</th>
            </tr>
          </thead>
          <tbody>
            {runs.map(r => (
              <tr
                key={r.run_id}
                className={
                  'kale-py-history-run' +
                  (r.run_id === props.current ? ' kale-py-history-current' : '')
                }
                data-run={r.run_id}
                data-status={r.status}
                title={`Show run ${r.run_id}`}
                onClick={() => void props.model.openRun(r.run_id)}
              >
                <td>{formatStart(r)}</td>
                <td className={`kale-py-status-${r.status}`}>{r.status}</td>
                <td>{r.duration === null ? '…' : formatSeconds(r.duration)}</td>
                <td className="kale-py-history-values">{runValues(r)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </details>
  );
}

function formatStart(r: IRunSummary): string {
  if (!r.started) {
    return r.run_id;
  }
  const d = new Date(r.started);
  return isNaN(d.getTime()) ? r.started : d.toLocaleString();
}

/** Serve the model a local run saved (`nb2pipe serve`), and stop it. */
function ServeSection(props: { model: PipelineModel }): JSX.Element {
  const { model } = props;
  const action = model.state.serve;
  const served = model.state.analysis?.served ?? [];
  const serving = action.result;
  return (
    <Section title="Serve locally" id="kale-py-serve-section" open={false}>
      <div className="kale-py-hint">
        {served.map(s => s.variable).join(', ')} from the latest local run, over the Open
        Inference Protocol (V2) with KServe&apos;s model server, on this machine.
      </div>
      <div className="kale-py-buttons">
        <button
          id="kale-py-serve"
          className="jp-mod-styled"
          disabled={action.busy}
          onClick={() => void model.serveLocally()}
        >
          {action.busy ? 'Starting…' : serving ? 'Restart' : 'Serve'}
        </button>
        {serving && (
          <button
            id="kale-py-serve-stop"
            className="jp-mod-styled"
            disabled={action.busy}
            onClick={() => void model.stopServing()}
          >
            Stop
          </button>
        )}
      </div>
      {serving && (
        <div id="kale-py-serve-result" className="kale-py-result" data-url={serving.url}>
          Serving <b>{serving.variable}</b> (step {serving.step}, run {serving.run_id}) at{' '}
          <code>{serving.url}</code>
          <pre className="kale-py-serve-example">
            {`curl -s ${serving.url} -d '{"inputs": [{"name": "x", ` +
              `"shape": [1, N], "datatype": "FP64", "data": [...]}]}'`}
          </pre>
        </div>
      )}
      <ActionError model={model} error={action.error} diagnostics={action.diagnostics} />
    </Section>
  );
}

/** Does the pipeline compute what the notebook computes? A kernel run against a pipeline run. */
function VerifySection(props: IActionProps): JSX.Element {
  const { model } = props;
  const action = model.state.verify;
  const result = action.result;
  return (
    <Section title="Verify" id="kale-py-verify-section" open={false}>
      <p className="kale-py-hint">
        Runs the notebook top to bottom in a kernel and as the pipeline, and compares every
        variable the steps bind.
      </p>
      <div className="kale-py-buttons">
        <button
          id="kale-py-verify"
          className="jp-mod-styled"
          disabled={action.busy || props.blocked}
          onClick={() => void model.verify(props.params)}
        >
          {action.busy ? 'Verifying…' : 'Verify'}
        </button>
      </div>
      {result && (
        <div id="kale-py-verify-result" data-ok={String(result.ok)}>
          <div className="kale-py-status">
            <b className={result.ok ? 'kale-py-status-succeeded' : 'kale-py-status-failed'}>
              {result.ok ? 'Same results' : 'Different results'}
            </b>
            : {result.compared} variable(s) compared, {result.differences.length} differ
            {result.unstable.length ? `, ${result.unstable.length} unstable` : ''}
          </div>
          <ul className="kale-py-run-steps">
            {result.steps.map(s => (
              <li
                key={s.step}
                className="kale-py-verify-step"
                data-step={s.step}
                data-differences={s.differences.length}
              >
                <span className="kale-py-run-step-name">{s.step}</span>
                <span
                  className={
                    'kale-py-run-step-status kale-py-status-' +
                    (s.error || s.differences.length ? 'failed' : 'succeeded')
                  }
                >
                  {s.error
                    ? 'failed'
                    : s.differences.length
                      ? `differs: ${s.differences.join(', ')}`
                      : `${s.compared} same`}
                </span>
                {s.error && <div className="kale-py-error">{s.error}</div>}
              </li>
            ))}
          </ul>
          {result.differences.map(d => (
            <div key={d.name} className="kale-py-error kale-py-verify-difference">
              {d.name} (step {d.step}): notebook {d.kernel}, pipeline {d.pipeline}
            </div>
          ))}
        </div>
      )}
      <ActionError model={model} error={action.error} diagnostics={action.diagnostics} />
    </Section>
  );
}

/** Search pipeline parameters for the best value of a metric, with local runs. */
function TuneSection(props: {
  model: PipelineModel;
  openOutput: OpenStepOutput;
}): JSX.Element {
  const { model } = props;
  const analysis = model.state.analysis;
  const parameters = (analysis?.parameters ?? []).filter(p =>
    ['int', 'float', 'bool', 'str'].includes(p.type)
  );
  const metrics = analysis?.metrics ?? [];
  const [specs, setSpecs] = React.useState<Record<string, string>>({});
  const [objective, setObjective] = React.useState('');
  const [maximize, setMaximize] = React.useState(true);
  const [trials, setTrials] = React.useState('10');
  const [parallel, setParallel] = React.useState('1');
  const [algorithm, setAlgorithm] = React.useState<'random' | 'grid' | 'tpe'>('tpe');
  const chosenObjective = objective || metrics[0]?.name || '';
  const { search, problems } = tuneRequest({
    specs,
    objective: chosenObjective,
    maximize,
    trials,
    parallel,
    algorithm
  });
  const action = model.state.tune;
  const tune = action.result;
  return (
    <Section title="Tune locally" id="kale-py-tune-section" open={false}>
      {parameters.length === 0 || metrics.length === 0 ? (
        <p className="kale-py-hint">
          Tuning needs pipeline parameters and a pipeline metric to optimise.
        </p>
      ) : (
        <>
          {parameters.map(p => (
            <div key={p.name} className="kale-py-tune-param" data-param={p.name}>
              <label className="kale-py-checkbox">
                <input
                  type="checkbox"
                  className="kale-py-tune-enable"
                  checked={p.name in specs}
                  onChange={e => {
                    const next = { ...specs };
                    if (e.target.checked) {
                      next[p.name] = defaultSpec(p);
                    } else {
                      delete next[p.name];
                    }
                    setSpecs(next);
                  }}
                />
                {p.name} <small>({p.type})</small>
              </label>
              {p.name in specs && (
                <input
                  className="jp-mod-styled kale-py-tune-spec"
                  value={specs[p.name]}
                  title="LOW..HIGH, with :log or :step=S; or choices A,B,C"
                  onChange={e => setSpecs({ ...specs, [p.name]: e.target.value })}
                />
              )}
            </div>
          ))}
          <label className="kale-py-field">
            <span>Objective</span>
            <select
              id="kale-py-tune-objective"
              className="jp-mod-styled"
              value={chosenObjective}
              onChange={e => setObjective(e.target.value)}
            >
              {metrics.map(m => (
                <option key={m.name} value={m.name}>
                  {m.name}
                </option>
              ))}
            </select>
          </label>
          <label className="kale-py-field">
            <span>Direction</span>
            <select
              id="kale-py-tune-direction"
              className="jp-mod-styled"
              value={maximize ? 'maximize' : 'minimize'}
              onChange={e => setMaximize(e.target.value === 'maximize')}
            >
              <option value="maximize">maximize</option>
              <option value="minimize">minimize</option>
            </select>
          </label>
          <label className="kale-py-field">
            <span>Trials · at once · algorithm</span>
            <span className="kale-py-tune-row">
              <input
                id="kale-py-tune-trials"
                className="jp-mod-styled"
                value={trials}
                onChange={e => setTrials(e.target.value)}
              />
              <input
                id="kale-py-tune-parallel"
                className="jp-mod-styled"
                value={parallel}
                onChange={e => setParallel(e.target.value)}
              />
              <select
                id="kale-py-tune-algorithm"
                className="jp-mod-styled"
                value={algorithm}
                onChange={e => setAlgorithm(e.target.value as 'random' | 'grid' | 'tpe')}
              >
                <option value="tpe">tpe</option>
                <option value="random">random</option>
                <option value="grid">grid</option>
              </select>
            </span>
          </label>
          <div className="kale-py-buttons">
            <button
              id="kale-py-tune"
              className="jp-mod-styled"
              disabled={action.busy || problems.length > 0}
              title={problems.join('; ') || 'Run the trials on this machine'}
              onClick={() =>
                void model.startTune({
                  search,
                  objective: chosenObjective,
                  maximize,
                  trials: parseInt(trials, 10),
                  parallel: parseInt(parallel, 10),
                  algorithm
                })
              }
            >
              {action.busy ? 'Tuning…' : 'Tune'}
            </button>
          </div>
        </>
      )}
      {tune && (
        <div id="kale-py-tune-result" data-status={tune.status}>
          <div className="kale-py-status">
            Tuning {tune.objective} ({tune.direction}):{' '}
            <b className={`kale-py-status-${tune.status}`}>{tune.status}</b>,{' '}
            {tune.trials.length}
            {tune.planned_trials ? `/${tune.planned_trials}` : ''} trials
            {tune.status !== 'running' && (
              <button
                className="jp-mod-styled kale-py-small kale-py-open-tune-report"
                onClick={() => props.openOutput(tune.tune_id, '', 'tune')}
              >
                report
              </button>
            )}
          </div>
          <table className="kale-py-history-table kale-py-tune-trials">
            <thead>
              <tr>
                <th>trial</th>
                <th>{tune.objective}</th>
                <th>parameters</th>
              </tr>
            </thead>
            <tbody>
              {rankTrials(tune).map(t => (
                <tr
                  key={t.number}
                  className={
                    'kale-py-tune-trial' +
                    (tune.best && tune.best.number === t.number ? ' kale-py-history-current' : '')
                  }
                  data-trial={t.number}
                  title={t.error ?? `run ${t.run_id ?? ''}`}
                >
                  <td>{t.number}</td>
                  <td>{t.value === null ? 'failed' : +t.value.toPrecision(6)}</td>
                  <td className="kale-py-history-values">
                    {runValues({ params: t.params, metrics: {} })}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <ActionError model={model} error={action.error} diagnostics={action.diagnostics} />
    </Section>
  );
}

function CompileSection(props: IActionProps): JSX.Element {
  const { model } = props;
  const action = model.state.compile;
  return (
    <Section title="Compile for Kubeflow" id="kale-py-compile-section" open={false}>
      <div className="kale-py-buttons">
        <button
          id="kale-py-compile"
          className="jp-mod-styled"
          disabled={action.busy || props.blocked}
          title="Save the notebook and write the KFP pipeline YAML"
          onClick={() => void model.compile(props.params)}
        >
          {action.busy ? 'Compiling…' : 'Compile'}
        </button>
      </div>
      {action.result && (
        <div id="kale-py-compile-result" className="kale-py-result">
          Wrote <code>{action.result.path}</code> ({action.result.steps} step(s),{' '}
          {formatBytes(action.result.bytes)})
        </div>
      )}
      <ActionError model={model} error={action.error} diagnostics={action.diagnostics} />
    </Section>
  );
}

function SubmitSection(props: IActionProps): JSX.Element {
  const { model } = props;
  const action = model.state.submit;
  const settings = model.settings!;
  const [host, setHost] = React.useState(settings.kfp_host);
  const [experiment, setExperiment] = React.useState(settings.experiment_name);
  const [token, setToken] = React.useState('');
  const [schedule, setSchedule] = React.useState('');
  return (
    <Section title="Submit to Kubeflow" id="kale-py-submit-section" open={false}>
      <label className="kale-py-field">
        <span>KFP host</span>
        <input
          id="kale-py-host"
          className="jp-mod-styled"
          value={host}
          placeholder="in-cluster or $KF_PIPELINES_ENDPOINT"
          onChange={e => setHost(e.target.value)}
        />
      </label>
      <label className="kale-py-field">
        <span>Experiment</span>
        <input
          id="kale-py-experiment"
          className="jp-mod-styled"
          value={experiment}
          onChange={e => setExperiment(e.target.value)}
        />
      </label>
      <label className="kale-py-field">
        <span>Token</span>
        <input
          id="kale-py-token"
          className="jp-mod-styled"
          type="password"
          autoComplete="off"
          value={token}
          placeholder="service account or kubeconfig"
          onChange={e => setToken(e.target.value)}
        />
      </label>
      <label className="kale-py-field">
        <span>Schedule (cron, optional)</span>
        <input
          id="kale-py-schedule"
          className="jp-mod-styled"
          value={schedule}
          placeholder="e.g. 0 9 * * 1-5: a recurring run"
          onChange={e => setSchedule(e.target.value)}
        />
      </label>
      <div className="kale-py-buttons">
        <button
          id="kale-py-submit"
          className="jp-mod-styled"
          disabled={action.busy || props.blocked}
          onClick={() =>
            void model.submit({ host, experiment, token, params: props.params, schedule })
          }
        >
          {action.busy ? 'Submitting…' : schedule.trim() ? 'Schedule' : 'Submit'}
        </button>
      </div>
      {action.result?.recurring_run_id && (
        <div id="kale-py-schedule-result" className="kale-py-result">
          Recurring run{' '}
          <a href={action.result.run_url} target="_blank" rel="noopener noreferrer">
            {action.result.recurring_run_id}
          </a>{' '}
          created.
        </div>
      )}
      {action.result && !action.result.recurring_run_id && (
        <div id="kale-py-submit-result" className="kale-py-result">
          Run{' '}
          <a href={action.result.run_url} target="_blank" rel="noopener noreferrer">
            {action.result.run_id}
          </a>{' '}
          started.
        </div>
      )}
      {action.result && model.state.kfpRun && (
        <div
          id="kale-py-kfp-status"
          className="kale-py-status"
          data-state={model.state.kfpRun.state}
        >
          On Kubeflow:{' '}
          <b className={`kale-py-kfp-${model.state.kfpRun.state.toLowerCase()}`}>
            {model.state.kfpRun.state.toLowerCase()}
          </b>
          {model.state.kfpRun.failed_step && (
            <span id="kale-py-kfp-failed-step">
              {' '}
              — step <b>{model.state.kfpRun.failed_step}</b> failed
            </span>
          )}
          {model.state.kfpRun.error && (
            <div className="kale-py-error">{model.state.kfpRun.error}</div>
          )}
        </div>
      )}
      {action.result?.served && action.result.served.length > 0 && (
        <ServedModels model={model} served={action.result.served} />
      )}
      <ActionError model={model} error={action.error} diagnostics={action.diagnostics} />
    </Section>
  );
}

/** The submitted pipeline's served models: their InferenceServices' state and URL. */
function ServedModels(props: {
  model: PipelineModel;
  served: { variable: string; name: string }[];
}): JSX.Element {
  const { model } = props;
  const serving = model.state.serving;
  const found = new Map((serving.result?.services ?? []).map(s => [s.variable, s]));
  return (
    <div id="kale-py-served" className="kale-py-result">
      <div>Served models (KServe):</div>
      <ul>
        {props.served.map(s => {
          const service = found.get(s.variable);
          return (
            <li
              key={s.variable}
              className="kale-py-served-model"
              data-variable={s.variable}
              data-state={service?.state ?? 'unknown'}
            >
              <b>{s.variable}</b> as <code>{s.name}</code>
              {service?.state === 'ready' ? (
                <>
                  {': '}
                  <a href={service.url} target="_blank" rel="noopener noreferrer">
                    {service.url}
                  </a>
                </>
              ) : (
                <span>
                  {': '}
                  {service
                    ? `${service.state}${service.message ? ` (${service.message})` : ''}`
                    : 'deployed when the run ends'}
                </span>
              )}
            </li>
          );
        })}
      </ul>
      <button
        id="kale-py-served-refresh"
        className="jp-mod-styled"
        disabled={serving.busy}
        onClick={() => void model.refreshServing()}
      >
        {serving.busy ? 'Reading…' : 'Refresh'}
      </button>
      <ActionError model={model} error={serving.error} diagnostics={serving.diagnostics} />
    </div>
  );
}

function formatBytes(bytes: number): string {
  return bytes < 1024 ? `${bytes} B` : `${(bytes / 1024).toFixed(1)} KiB`;
}

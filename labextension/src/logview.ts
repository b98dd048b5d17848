/**
 * A main-area tab with a step's log (text) or report (HTML) from a local run, or
 * a tuning's report (`tune`: `runId` is the tuning's id).
 */
import { MainAreaWidget } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';
import { KalePyAPI } from './api';

export type StepOutputKind = 'log' | 'report' | 'tune';

/** How often an open log is refreshed while its run is still running. */
const REFRESH_MS = 2000;

export class StepOutputView extends Widget {
  constructor(
    private readonly options: {
      api: KalePyAPI;
      path: string;
      runId: string;
      step: string;
      kind: StepOutputKind;
      /** True while the run is running: the log keeps growing. */
      isLive: () => boolean;
    }
  ) {
    super();
    this.addClass('kale-py-step-output');
    this.node.dataset.step = options.step;
    this.node.dataset.kind = options.kind;
    if (options.kind === 'log') {
      this._pre = document.createElement('pre');
      this._pre.className = 'kale-py-log';
      this.node.appendChild(this._pre);
    } else {
      this._frame = document.createElement('iframe');
      this._frame.className = 'kale-py-report';
      // The report holds the notebook's own outputs: scripts may run, but in
      // an opaque origin that cannot reach JupyterLab or the server.
      this._frame.setAttribute('sandbox', 'allow-scripts allow-popups');
      this.node.appendChild(this._frame);
    }
    void this.reload();
  }

  async reload(): Promise<void> {
    const { api, path, runId, step, kind } = this.options;
    try {
      if (kind === 'log') {
        const text = await api.getLog(path, runId, step);
        const pre = this._pre!;
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.textContent = text || '(no output yet)';
        if (atEnd) {
          pre.scrollTop = pre.scrollHeight; // follow the log like `tail -f`
        }
      } else if (kind === 'tune') {
        this._frame!.srcdoc = await api.getTuneReport(path, runId);
      } else {
        this._frame!.srcdoc = await api.getReport(path, runId, step);
      }
    } catch (error) {
      const message = `Cannot load the ${kind} of step ${step}: ${(error as Error).message}`;
      if (this._pre) {
        this._pre.textContent = message;
      } else {
        this._frame!.srcdoc = `<pre>${escapeHTML(message)}</pre>`;
      }
    }
    if (kind === 'log' && this.options.isLive() && !this.isDisposed) {
      this._timer = window.setTimeout(() => void this.reload(), REFRESH_MS);
    }
  }

  dispose(): void {
    window.clearTimeout(this._timer);
    super.dispose();
  }

  private _pre: HTMLPreElement | null = null;
  private _frame: HTMLIFrameElement | null = null;
  private _timer = 0;
}

function escapeHTML(text: string): string {
  return text.replace(/[&<>"]/g, c => `&#${c.charCodeAt(0)};`);
}

export function createStepOutputWidget(
  options: ConstructorParameters<typeof StepOutputView>[0]
): MainAreaWidget<StepOutputView> {
  const widget = new MainAreaWidget({ content: new StepOutputView(options) });
  widget.id = `kale-py-${options.kind}-${options.runId}-${options.step}`;
  if (options.kind === 'tune') {
    widget.title.label = 'tuning report';
    widget.title.caption = `trials of tuning ${options.runId}`;
  } else {
    widget.title.label = `${options.step} ${options.kind}`;
    widget.title.caption = `${options.kind} of step ${options.step}, run ${options.runId}`;
  }
  widget.title.closable = true;
  return widget;
}

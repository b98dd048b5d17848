/**
 * kale_py's JupyterLab extension: wires the Pipeline side panel into the shell.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { KalePyAPI } from './api';
import { GRAPH_TAB_ID, createGraphTab } from './graphtab';
import { pipelineIcon } from './icon';
import { createStepOutputWidget } from './logview';
import { PipelineModel } from './model';
import { PipelinePanel } from './panel';

export const PANEL_ID = 'kale-py-panel';
const graphCommand = 'kale-py:open-graph';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'kale-py:plugin',
  description: 'Turn a tagged notebook into a multi-step pipeline.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ILayoutRestorer, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ) => {
    const api = new KalePyAPI(app.serviceManager.serverSettings);
    const model = new PipelineModel(tracker, api);

    const panel = new PipelinePanel(model, (runId, step, kind) => {
      const path = model.path;
      const widget = createStepOutputWidget({
        api,
        path,
        runId,
        step,
        kind,
        isLive: () => model.state.run.result?.status === 'running'
      });
      const open = Array.from(app.shell.widgets('main')).find(
        w => w.id === widget.id
      );
      if (open) {
        widget.dispose();
        app.shell.activateById(open.id);
        return;
      }
      app.shell.add(widget, 'main', { mode: 'split-right' });
    }, () => app.commands.execute(graphCommand));
    panel.id = PANEL_ID;
    panel.title.icon = pipelineIcon;
    panel.title.caption = 'Pipeline';
    app.shell.add(panel, 'left', { rank: 650 });
    restorer?.add(panel, PANEL_ID);

    // A click on a cell's step label selects the cell in the panel's tag editor.
    model.labelClicked.connect((_, index) => {
      model.selectCell(index);
      app.shell.activateById(PANEL_ID);
      document.getElementById('kale-py-cell')?.scrollIntoView({ block: 'nearest' });
    });

    const command = 'kale-py:open-panel';
    app.commands.addCommand(command, {
      label: 'Open the Pipeline Panel',
      execute: () => app.shell.activateById(PANEL_ID)
    });
    palette?.addItem({ command, category: 'Pipeline' });
    app.commands.addCommand(graphCommand, {
      label: 'Open the Pipeline Graph',
      execute: () => {
        const open = Array.from(app.shell.widgets('main')).find(w => w.id === GRAPH_TAB_ID);
        if (open) {
          app.shell.activateById(open.id);
          return;
        }
        app.shell.add(createGraphTab(model), 'main', { mode: 'split-right' });
      }
    });
    palette?.addItem({ command: graphCommand, category: 'Pipeline' });
  }
};

export default plugin;

/**
 * The step graph in a main-area tab: the whole pipeline laid out, with pan,
 * zoom and fit, live run status, and a click on a step highlighting its cells
 * in the notebook.
 */
import * as React from 'react';
import { MainAreaWidget } from '@jupyterlab/apputils';
import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';
import { GraphView } from './graphview';
import { PipelineModel } from './model';
import { runStatus } from './panel';

export const GRAPH_TAB_ID = 'kale-py-graph-tab';

class GraphTab extends ReactWidget {
  constructor(private readonly model: PipelineModel) {
    super();
    this.addClass('kale-py-graph-tab');
  }

  render(): JSX.Element {
    return (
      <UseSignal signal={this.model.changed}>
        {() => {
          const analysis = this.model.state.analysis;
          return (
            <div className="kale-py-graph-page">
              <div className="kale-py-graph-caption">
                {this.model.path || 'No notebook'}
                {analysis && ` — ${analysis.steps.length} step(s)`}
              </div>
              <GraphView
                interactive
                graph={analysis ?? { steps: [], edges: [], levels: [] }}
                status={runStatus(this.model.state.run.result)}
                selected={this.model.selectedStep}
                onSelectStep={name => this.model.highlightStep(name)}
              />
            </div>
          );
        }}
      </UseSignal>
    );
  }
}

export function createGraphTab(model: PipelineModel): MainAreaWidget<GraphTab> {
  const widget = new MainAreaWidget({ content: new GraphTab(model) });
  widget.id = GRAPH_TAB_ID;
  widget.title.label = 'Pipeline graph';
  widget.title.caption = 'The pipeline steps and the variables passed between them';
  widget.title.closable = true;
  return widget;
}

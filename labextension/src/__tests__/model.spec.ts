import { INotebookModel } from '@jupyterlab/notebook';
import { notebookForAnalysis } from '../model';

describe('notebookForAnalysis', () => {
  it('sends the live notebook without outputs', () => {
    const content = {
      nbformat: 4,
      nbformat_minor: 5,
      metadata: { kubeflow_notebook: { pipeline_name: 'p' } },
      cells: [
        { cell_type: 'markdown', source: '# t', metadata: {} },
        {
          cell_type: 'code',
          source: 'x = 1',
          metadata: { tags: ['step:a'] },
          execution_count: 3,
          outputs: [{ output_type: 'stream', name: 'stdout', text: 'big' }]
        }
      ]
    };
    const model = { toJSON: () => content } as unknown as INotebookModel;
    expect(notebookForAnalysis(model)).toEqual({
      ...content,
      cells: [
        content.cells[0],
        { ...content.cells[1], outputs: [], execution_count: null }
      ]
    });
    // the model's own JSON is left alone
    expect(content.cells[1].outputs).toHaveLength(1);
  });
});

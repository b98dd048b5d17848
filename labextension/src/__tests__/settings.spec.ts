import {
  defaultSettings,
  pipelineNameFor,
  readSettings,
  writeSettings
} from '../settings';

describe('notebook settings', () => {
  it('is not enabled without Kale metadata', () => {
    expect(readSettings(undefined)).toBeNull();
    expect(readSettings('x')).toBeNull();
  });

  it('derives a pipeline name from the notebook path', () => {
    expect(pipelineNameFor('dir/My Model v2.ipynb')).toBe('my-model-v2');
    expect(pipelineNameFor('___.ipynb')).toBe('pipeline');
    expect(defaultSettings('a/train.ipynb')).toMatchObject({
      pipeline_name: 'train',
      enable_caching: true,
      volumes: []
    });
  });

  it("reads Kale's fields, including old spellings", () => {
    const s = readSettings({
      pipeline_name: 'p',
      experiment: { name: 'exp' },
      docker_image: 'img:1',
      enable_caching: false,
      volumes: [{ name: 'data', mount_point: '/data', size: 5 }, 'junk']
    })!;
    expect(s).toMatchObject({
      pipeline_name: 'p',
      experiment_name: 'exp',
      base_image: 'img:1',
      enable_caching: false
    });
    expect(s.volumes).toEqual([{ name: 'data', mount_point: '/data', type: 'pvc', size: 5 }]);
  });

  it('writes its fields and keeps every other key', () => {
    const raw = {
      pipeline_name: 'old',
      katib_run: false,
      some_future_key: { a: 1 },
      docker_image: 'img:1',
      volumes: [{ name: 'v', mount_point: '/v', type: 'pvc', annotations: [{ key: 'k' }] }]
    };
    const settings = { ...readSettings(raw)!, pipeline_name: ' new ' };
    const out = writeSettings(raw, settings);
    expect(out).toEqual({
      pipeline_name: 'new',
      experiment_name: '',
      pipeline_description: '',
      base_image: 'img:1',
      enable_caching: true,
      katib_run: false,
      some_future_key: { a: 1 },
      volumes: [{ name: 'v', mount_point: '/v', type: 'pvc', annotations: [{ key: 'k' }] }]
    });
    expect(raw.pipeline_name).toBe('old'); // the input is not mutated
  });

  it('writes kfp_host only when set or already present', () => {
    expect('kfp_host' in writeSettings({}, defaultSettings('n.ipynb'))).toBe(false);
    expect(
      writeSettings({}, { ...defaultSettings('n.ipynb'), kfp_host: 'http://kfp' }).kfp_host
    ).toBe('http://kfp');
  });

  it('reads and writes the PodDefaults the steps carry, only when chosen or present', () => {
    const raw = { poddefaults: ['access-ml-pipeline', 3, 'add-gcp-secret'] };
    expect(readSettings(raw)!.poddefaults).toEqual(['access-ml-pipeline', 'add-gcp-secret']);
    expect('poddefaults' in writeSettings({}, defaultSettings('n.ipynb'))).toBe(false);
    const chosen = { ...defaultSettings('n.ipynb'), poddefaults: ['access-ml-pipeline'] };
    expect(writeSettings({}, chosen).poddefaults).toEqual(['access-ml-pipeline']);
    // unticking the last one keeps an empty list rather than a stale one
    expect(writeSettings(raw, { ...chosen, poddefaults: [] }).poddefaults).toEqual([]);
  });
});

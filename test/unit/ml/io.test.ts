import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LayersModel, SymbolicTensor } from '@tensorflow/tfjs-layers';
import { configureBackend, useLayers, useTf, type Tf, type TfLayersApi } from '../../../src/ml/backend.js';
import { loadModel, saveModel } from '../../../src/ml/io.js';
import { freezeLayers, isBatchNormInference, unfreezeLayers } from '../../../src/ml/surgery.js';
import { StageError } from '../../../src/runtime/errors.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';

let tf: Tf;
let tfl: TfLayersApi;
let dir: TestDir;
let server: http.Server;
let baseUrl: string;
const requests: string[] = [];

function tinyNet(): LayersModel {
  const input = tfl.input({ shape: [4, 4, 2], name: 'image' });
  let x = tfl.layers.conv2d({ filters: 3, kernelSize: 3, padding: 'same', name: 'conv' }).apply(input) as SymbolicTensor;
  x = tfl.layers.batchNormalization({ name: 'bn' }).apply(x) as SymbolicTensor;
  x = tfl.layers.globalAveragePooling2d({ name: 'gap' }).apply(x) as SymbolicTensor;
  return tfl.model({ inputs: input, outputs: tfl.layers.dense({ units: 2, name: 'head' }).apply(x) as SymbolicTensor, name: 'tiny' });
}

function predict(model: LayersModel): number[] {
  return tf.tidy(() => Array.from((model.predict(tf.reshape(tf.linspace(-1, 1, 2 * 4 * 4 * 2), [2, 4, 4, 2])) as ReturnType<Tf['tensor']>).dataSync()));
}

async function rejection(promise: Promise<unknown>): Promise<StageError> {
  const error = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(StageError);
  return error as StageError;
}

/** model.json with its manifest paths replaced, next to the real weights. */
function writeManifestVariant(name: string, paths: string[]): string {
  const json = JSON.parse(readFileSync(dir.path('saved/model.json'), 'utf8'));
  json.weightsManifest[0].paths = paths;
  return dir.write(`saved/${name}.json`, JSON.stringify(json));
}

beforeAll(async () => {
  configureBackend('wasm');
  tf = await useTf();
  tfl = await useLayers();
  dir = testdir({ 'outside.bin': Buffer.alloc(16) });
  // Serves dir/ over HTTP on loopback, like a static model host.
  server = http.createServer((req, res) => {
    requests.push(req.url ?? '');
    const file = path.join(dir.root, decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname));
    try {
      const body = readFileSync(file);
      res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(body);
    } catch {
      res.writeHead(404).end('not found');
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
  dir.cleanup();
});

describe('saveModel / loadModel', () => {
  it('round-trips weights, extra metadata and the frozen state (BN stays in inference mode)', async () => {
    const model = tinyNet();
    freezeLayers(model, { until: 'bn' });
    const saved = await saveModel(model, dir.path('saved'), { metadata: { labels: ['cat', 'dog'] } });
    expect(saved.weightBytes).toBe(readFileSync(saved.weightsPath).byteLength);
    const json = JSON.parse(readFileSync(saved.modelPath, 'utf8'));
    expect(json.weightsManifest[0].paths).toEqual(['weights.bin']);
    expect(json.userDefinedMetadata).toEqual({ labels: ['cat', 'dog'], finetunePipeline: { batchNormInference: ['bn'] } });

    const loaded = await loadModel('saved', { baseDir: dir.root }); // a folder resolves to its model.json
    expect(predict(loaded)).toEqual(predict(model));
    expect(loaded.getLayer('conv').trainable).toBe(false);
    expect(loaded.getLayer('head').trainable).toBe(true);
    expect(isBatchNormInference(loaded.getLayer('bn'))).toBe(true);
    expect(loaded.getUserDefinedMetadata()).toMatchObject({ labels: ['cat', 'dog'] });
  });

  it('keeps a trainable BN held in inference mode (keepBatchNormInference) through save and load', async () => {
    const model = tinyNet();
    freezeLayers(model);
    unfreezeLayers(model, { keepBatchNormInference: true });
    await saveModel(model, dir.path('kept'));
    const loaded = await loadModel(dir.path('kept/model.json'));
    expect(loaded.getLayer('bn').trainable).toBe(true);
    expect(isBatchNormInference(loaded.getLayer('bn'))).toBe(true);
  });

  it('loads over http from a model.json URL, fetching weights relative to it', async () => {
    requests.length = 0;
    const loaded = await loadModel(`${baseUrl}/saved/model.json`);
    expect(requests).toEqual(['/saved/model.json', '/saved/weights.bin']);
    expect(loaded.layers.map((l) => l.name)).toEqual(['image', 'conv', 'bn', 'gap', 'head']);
  });

  it('reports a missing model.json as model_not_found with the URL and status', async () => {
    const error = await rejection(loadModel(`${baseUrl}/nope/model.json`));
    expect(error.code).toBe('model_not_found');
    expect(error.details).toEqual({ url: `${baseUrl}/nope/model.json`, status: 404 });
    expect((await rejection(loadModel(dir.path('nope/model.json')))).code).toBe('model_not_found');
  });

  it('reports a missing weight file as model_fetch_failed with the URL and status', async () => {
    writeManifestVariant('missing-weights', ['gone.bin']);
    const error = await rejection(loadModel(`${baseUrl}/saved/missing-weights.json`));
    expect(error.code).toBe('model_fetch_failed');
    expect(error.details).toEqual({ url: `${baseUrl}/saved/gone.bin`, status: 404 });
    expect(error.message).toContain('HTTP 404');
  });

  it('reports an unreachable host as model_fetch_failed', async () => {
    const closed = http.createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));
    const error = await rejection(loadModel(`http://127.0.0.1:${port}/model.json`));
    expect(error.code).toBe('model_fetch_failed');
    expect(error.message).toMatch(/ECONNREFUSED/);
  });

  const escapes: [string, RegExp][] = [
    ['../outside.bin', /goes up with "\.\."/],
    ['%2e%2e/outside.bin', /goes up with "\.\."/],
    ['/outside.bin', /is absolute/],
    ['http://127.0.0.2/weights.bin', /names another location/],
    ['//127.0.0.2/weights.bin', /names another location/],
    ['..%2Foutside.bin', /path separator/],
  ];
  for (const [entry, why] of escapes) {
    it(`refuses the manifest path ${entry} before reading anything`, async () => {
      const name = `escape-${escapes.findIndex(([e]) => e === entry)}`;
      writeManifestVariant(name, [entry]);
      requests.length = 0;
      for (const source of [`${baseUrl}/saved/${name}.json`, dir.path(`saved/${name}.json`)]) {
        const error = await rejection(loadModel(source));
        expect(error.code).toBe('model_bad_manifest');
        expect(error.message).toMatch(why);
      }
      expect(requests).toEqual([`/saved/${name}.json`]);
    });
  }

  it('refuses weights whose byte length does not match the manifest', async () => {
    const weights = readFileSync(dir.path('saved/weights.bin'));
    writeFileSync(dir.path('saved/short.bin'), weights.subarray(0, weights.byteLength - 4));
    writeManifestVariant('short', ['short.bin']);
    const error = await rejection(loadModel(`${baseUrl}/saved/short.json`));
    expect(error.code).toBe('model_bad_manifest');
    expect(error.message).toContain(`has ${weights.byteLength - 4} bytes but its 8 weights need ${weights.byteLength}`);
  });

  it('refuses a graph model and a model.json without a manifest', async () => {
    dir.write('graph/model.json', JSON.stringify({ format: 'graph-model', modelTopology: {}, weightsManifest: [] }));
    expect((await rejection(loadModel(dir.path('graph')))).message).toMatch(/graph model/);
    dir.write('bare/model.json', JSON.stringify({ modelTopology: {} }));
    expect((await rejection(loadModel(dir.path('bare')))).message).toMatch(/no "weightsManifest"/);
    dir.write('junk/model.json', '{ not json');
    expect((await rejection(loadModel(dir.path('junk')))).code).toBe('model_bad_manifest');
  });
});

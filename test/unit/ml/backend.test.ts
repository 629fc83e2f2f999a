/**
 * Backend choice. Each vitest file runs in its own process, so the module state starts fresh;
 * tests here run in order and the first successful `useTf()` fixes the backend for the file.
 */
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import {
  backendPreference,
  backendUnavailable,
  configureBackend,
  describeBackend,
  predictBackend,
  useLayers,
  useTf,
} from '../../../src/ml/backend.js';
import { StageError } from '../../../src/runtime/errors.js';

const require = createRequire(import.meta.url);

function captureLogger() {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk, _encoding, done) {
      lines.push(JSON.parse(String(chunk)));
      done();
    },
  });
  return { log: pino({ level: 'debug' }, stream), lines };
}

describe('backend', () => {
  it('loads no tfjs module at import time', () => {
    // backend.ts was imported above; tfjs-core's CJS bundle would be in the require cache.
    const loadedTf = Object.keys(require.cache).filter((file) => file.includes('@tensorflow'));
    expect(loadedTf).toEqual([]);
    expect(describeBackend()).toBeNull();
  });

  it('predicts wasm on this machine (tfjs-node is not installed) without loading anything', () => {
    expect(backendPreference()).toBe('auto');
    expect(predictBackend()).toEqual({ name: 'wasm', reason: '@tensorflow/tfjs-backend-wasm is installed' });
    expect(Object.keys(require.cache).filter((file) => file.includes('@tensorflow'))).toEqual([]);
  });

  it('does not predict tfjs-node when its package resolves but no native binding was built', () => {
    configureBackend('auto', { resolveModule: (s) => (s === '@tensorflow/tfjs-node' ? '/nowhere/dist/index.js' : null) });
    // The package resolves but no binding was built: not a candidate.
    expect(predictBackend().name).toBe('cpu');
    configureBackend('auto', { resolveModule: undefined });
  });

  it('fails with backend_unavailable and an install hint when an explicit backend cannot load', async () => {
    configureBackend('node');
    const error = await useTf().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StageError);
    expect((error as StageError).code).toBe('backend_unavailable');
    expect((error as StageError).message).toMatch(/backend "node" is not available: .*npm install @tensorflow\/tfjs-node/);
    expect(describeBackend()).toBeNull();
  });

  it('auto skips the node packages that fail to import, logs why, and settles on wasm', async () => {
    configureBackend('auto');
    const { log, lines } = captureLogger();
    const tf = await useTf(log);
    expect(tf.getBackend()).toBe('wasm');
    const info = describeBackend();
    expect(info).toMatchObject({ name: 'wasm', tfBackend: 'wasm', package: '@tensorflow/tfjs-backend-wasm', coreVersion: '4.22.0' });
    expect(info?.skipped.map((s) => s.name)).toEqual(['node-gpu', 'node']);
    expect(info?.skipped[1].reason).toMatch(/tfjs-node/);
    expect(info?.addedKernels).toEqual(['Conv2DBackpropFilter', 'DepthwiseConv2dNativeBackpropFilter', 'DepthwiseConv2dNativeBackpropInput', 'Conv2DBackpropInput', 'Tile', 'Identity']);
    expect(lines.filter((l) => l.msg === 'backend skipped').map((l) => l.backend)).toEqual(['node-gpu', 'node']);
    expect(lines.find((l) => l.msg === 'backend ready')).toMatchObject({ backend: 'wasm' });
    // Layers come from the same tfjs-core instance: a layer's tensors are the engine's tensors.
    const tfl = await useLayers();
    const out = tfl.layers.dense({ units: 1, inputShape: [2] }).apply(tf.ones([1, 2])) as InstanceType<typeof tf.Tensor>;
    expect(out).toBeInstanceOf(tf.Tensor);
    expect(await useTf()).toBe(tf); // initialized once
  });
});

describe('backendUnavailable', () => {
  it('says why an explicit backend cannot be used, without loading anything', () => {
    configureBackend(backendPreference(), { resolveModule: (s) => (s === '@tensorflow/tfjs-node' ? '/nowhere/dist/index.js' : s.includes('wasm') ? '/x/wasm.js' : null) });
    expect(backendUnavailable('auto')).toBeNull();
    expect(backendUnavailable('wasm')).toBeNull();
    expect(backendUnavailable('node')).toMatch(/native binding was not built.*npm install @tensorflow\/tfjs-node/);
    expect(backendUnavailable('node-gpu')).toMatch(/@tensorflow\/tfjs-node-gpu is not installed/);
    configureBackend(backendPreference(), { resolveModule: undefined });
  });
});

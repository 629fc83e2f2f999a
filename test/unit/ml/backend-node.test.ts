/**
 * How a node backend is picked up: with a stand-in for tfjs-node (it cannot be installed on
 * this machine). Its own file, because a process gets one backend.
 */
import { describe, expect, it } from 'vitest';
import { configureBackend, describeBackend, predictBackend, useLayers, useTf } from '../../../src/ml/backend.js';
import { Writable } from 'node:stream';
import { pino } from 'pino';

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

describe('backend with tfjs-node', () => {
  it('picks a node backend from the module that registered it, with layers from the same module', async () => {
    // A stand-in for tfjs-node: the real one registers "tensorflow" at import and re-exports
    // tfjs-core and tfjs-layers from one copy. The test does not keep this backend.
    const core = await import('@tensorflow/tfjs-core');
    const layers = await import('@tensorflow/tfjs-layers');
    const cpu = await import('@tensorflow/tfjs-backend-cpu');
    const imported: string[] = [];
    const fakeNode = { ...core, ...layers };
    configureBackend('auto', {
      importModule: async (specifier) => {
        imported.push(specifier);
        if (specifier === '@tensorflow/tfjs-node-gpu') throw new Error('libcudart.so.11.0: cannot open shared object file');
        if (specifier === '@tensorflow/tfjs-node') {
          core.registerBackend('tensorflow', () => new cpu.MathBackendCPU());
          return { default: fakeNode };
        }
        return import(specifier);
      },
    });
    const { log, lines } = captureLogger();
    const tf = await useTf(log);
    expect(tf).toBe(fakeNode);
    expect(await useLayers()).toBe(fakeNode);
    expect(tf.getBackend()).toBe('tensorflow');
    expect(describeBackend()).toMatchObject({ name: 'node', tfBackend: 'tensorflow', skipped: [{ name: 'node-gpu', reason: 'libcudart.so.11.0: cannot open shared object file' }] });
    expect(lines.find((l) => l.msg === 'backend skipped')).toMatchObject({ backend: 'node-gpu' });
    expect(imported.slice(0, 2)).toEqual(['@tensorflow/tfjs-node-gpu', '@tensorflow/tfjs-node']);
    expect(predictBackend()).toEqual({ name: 'node', reason: 'initialized' });
    // One process, one backend.
    expect(() => configureBackend('wasm')).toThrow(/after the backend was initialized/);
  });
});

/**
 * One key = one set of bytes: Adam restored from a checkpoint continues bit-identically to an
 * uninterrupted run (TF.js `setWeights` rebuilds accBeta as pow(beta, t+1), training builds it
 * by repeated multiplication; the checkpoint saves the exact values). And a damaged
 * checkpoint.json is no checkpoint, never a crash.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type * as TfCore from '@tensorflow/tfjs-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configureBackend, useTf, type Tf } from '../../../src/ml/backend.js';
import { checkCheckpointMeta, checkpointHook, restoreCheckpoint } from '../../../src/ml/checkpoint.js';

let tf: Tf;
const dirs: string[] = [];
beforeAll(async () => {
  configureBackend('cpu');
  tf = await useTf();
});
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

const tempDir = () => {
  const d = mkdtempSync(path.join(os.tmpdir(), 'ckpt-exact-'));
  dirs.push(d);
  return d;
};

/** Two variables, a quadratic loss, Adam: a "model" with getWeights/setWeights. */
function problem() {
  const w = tf.variable(tf.tensor2d([[0.3, -1.2, 2.5], [0.7, 0.01, -0.4]]));
  const b = tf.variable(tf.tensor1d([0.1, -0.2, 0.3]));
  const x = tf.tensor2d([[1, 2], [-0.5, 0.25], [3, -1]]);
  const target = tf.tensor2d([[1, 0, 0], [0, 1, 0], [0, 0, 1]]);
  const model = {
    getWeights: () => [w, b] as TfCore.Tensor[],
    setWeights: (values: TfCore.Tensor[]) => {
      w.assign(values[0] as TfCore.Tensor2D);
      b.assign(values[1] as TfCore.Tensor1D);
    },
  };
  const step = (optimizer: TfCore.Optimizer) => optimizer.minimize(() => tf.sum(tf.square(tf.sub(tf.add(tf.matMul(x, w), b), target))) as TfCore.Scalar, false, [w, b]);
  const values = () => [Array.from(w.dataSync()), Array.from(b.dataSync())];
  const dispose = () => [w, b, x, target].forEach((t) => t.dispose());
  return { model, step, values, dispose };
}

const TOTAL = 60;
const AT = 41;

async function interruptedRun(dropScalars: boolean): Promise<number[][]> {
  const dir = tempDir();
  const first = problem();
  const opt1 = tf.train.adam(0.01);
  for (let i = 0; i < AT; i++) first.step(opt1);
  await checkpointHook(dir, 'fp').onEpochEnd!({ tf, model: first.model as never, optimizer: opt1, epoch: AT - 1, epochs: TOTAL, history: [], stop: false }, {} as never);
  if (dropScalars) {
    const meta = JSON.parse(readFileSync(path.join(dir, 'checkpoint.json'), 'utf8'));
    delete meta.scalars; // what a checkpoint of the previous version held
    writeFileSync(path.join(dir, 'checkpoint.json'), JSON.stringify(meta));
  }
  opt1.dispose();
  first.dispose();
  const second = problem();
  const opt2 = tf.train.adam(0.01);
  const resumed = await restoreCheckpoint(tf, dir, 'fp', second.model, opt2);
  expect(resumed?.startEpoch).toBe(AT);
  for (let i = AT; i < TOTAL; i++) second.step(opt2);
  const out = second.values();
  opt2.dispose();
  second.dispose();
  return out;
}

describe('Adam restored from a checkpoint', () => {
  it(`continues bit-identically: ${AT} steps, checkpoint, restore into a fresh optimizer, ${TOTAL - AT} more`, async () => {
    const straight = problem();
    const opt = tf.train.adam(0.01);
    for (let i = 0; i < TOTAL; i++) straight.step(opt);
    const expected = straight.values();
    opt.dispose();
    straight.dispose();
    expect(await interruptedRun(false)).toEqual(expected);
    // Without the saved accBeta values (TF.js's own restore) the weights drift in the last bits.
    expect(await interruptedRun(true)).not.toEqual(expected);
  });
});

describe('checkpoint.json is data', () => {
  it.each([
    ['null', null],
    ['an array', []],
    ['no fingerprint', { epochs: 1, history: [], weights: [], optimizer: [] }],
    ['weights not a list', { epochs: 1, fingerprint: 'fp', history: [], weights: 3, optimizer: [] }],
    ['a bad shape', { epochs: 1, fingerprint: 'fp', history: [], weights: [{ shape: [-1] }], optimizer: [] }],
    ['bad scalars', { epochs: 1, fingerprint: 'fp', history: [], weights: [], optimizer: [], scalars: { accBeta1: 'x' } }],
  ])('%s: no checkpoint (restore returns undefined)', async (_name, meta) => {
    expect(checkCheckpointMeta(meta)).toBe(false);
    const dir = tempDir();
    writeFileSync(path.join(dir, 'checkpoint.json'), JSON.stringify(meta));
    const p = problem();
    const opt = tf.train.adam(0.01);
    expect(await restoreCheckpoint(tf, dir, 'fp', p.model, opt)).toBeUndefined();
    opt.dispose();
    p.dispose();
  });
});

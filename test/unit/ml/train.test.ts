/** The shared training loop on a tiny dense model: seeded, leak-free, guarded, schedulable. */
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { configureBackend, useLayers, useTf, type Tf } from '../../../src/ml/backend.js';
import { checkpointHook, restoreCheckpoint } from '../../../src/ml/checkpoint.js';
import { arraySource } from '../../../src/ml/sources.js';
import { createOptimizer, earlyStopping, evaluateSource, fitModel, learningRateAt, nanGuard, setLearningRate, type BatchSource, type TrainHook, type TrainState } from '../../../src/ml/train.js';
import { AbortedError } from '../../../src/runtime/errors.js';

let tf: Tf;
let tfl: Awaited<ReturnType<typeof useLayers>>;
beforeAll(async () => {
  configureBackend('wasm');
  tf = await useTf();
  tfl = await useLayers();
});

const data = (() => {
  const n = 48;
  const x = new Float32Array(n * 4);
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    y[i] = i % 3;
    for (let j = 0; j < 4; j++) x[i * 4 + j] = (j === y[i] ? 1 : 0) + ((i * 7 + j * 3) % 5) / 10;
  }
  return { x, y, recordShape: [4] };
})();

function tinyModel() {
  return tfl.sequential({
    layers: [
      tfl.layers.dense({ units: 8, inputShape: [4], activation: 'relu', kernelInitializer: tfl.initializers.glorotUniform({ seed: 1 }) }),
      tfl.layers.dropout({ rate: 0.3 }), // unseeded: the loop seeds each step's randomness
      tfl.layers.dense({ units: 3, activation: 'softmax', kernelInitializer: tfl.initializers.glorotUniform({ seed: 3 }) }),
    ],
  });
}

const fit = (model: ReturnType<typeof tinyModel>, hooks: TrainHook[] = [], epochs = 3, signal?: AbortSignal, val: BatchSource = arraySource(data, 8, 11)) =>
  fitModel(tf, model, arraySource(data, 8, 11), val, { epochs, optimizer: { name: 'adam', lr: 0.05 }, numClasses: 3, hooks, signal });

describe('fitModel', () => {
  it('learns, and the tensor count is flat across epochs and runs', async () => {
    const model = tinyModel();
    const counts: number[] = [];
    const history = await fit(model, [{ onEpochEnd: () => void counts.push(tf.memory().numTensors) }], 6);
    expect(new Set(counts).size).toBe(1);
    expect(history.at(-1)!.valAcc).toBeGreaterThan(0.6);
    const before = tf.memory().numTensors;
    await fit(model, [], 2);
    expect(tf.memory().numTensors).toBe(before);
    model.dispose();
  });

  it('is reproducible: the same seed gives the same weights (no Math.random)', async () => {
    const a = tinyModel();
    const b = tinyModel();
    await fit(a);
    await fit(b);
    const wa = a.getWeights().map((w) => Array.from(w.dataSync()));
    const wb = b.getWeights().map((w) => Array.from(w.dataSync()));
    expect(wa).toEqual(wb);
    a.dispose();
    b.dispose();
  });

  it('stops on a NaN loss with the epoch and batch', async () => {
    const model = tinyModel();
    model.layers[0].setWeights(model.layers[0].getWeights().map((w) => tf.fill(w.shape, NaN)));
    await expect(fit(model, [nanGuard()])).rejects.toMatchObject({ code: 'nan_loss', details: { epoch: 1, batch: 1 } });
    model.dispose();
  });

  it('early stopping stops after `patience` epochs without improvement and restores the best weights', async () => {
    const model = tinyModel();
    let bestWeights: number[][] = [];
    const stopper = earlyStopping({ patience: 1, minDelta: 10 }); // nothing counts as improvement after epoch 1
    const history = await fit(model, [stopper, { onEpochEnd: (state) => void (state.epoch === 0 && (bestWeights = state.model.getWeights().map((w) => Array.from(w.dataSync())))) }], 8);
    expect(history).toHaveLength(2);
    expect(stopper.best()!.epoch).toBe(0);
    expect(model.getWeights().map((w) => Array.from(w.dataSync()))).toEqual(bestWeights);
    model.dispose();
  });

  it('applies the learning rate to every optimizer, sgd included', async () => {
    for (const name of ['sgd', 'adam', 'rmsprop'] as const) {
      const optimizer = createOptimizer(tf, { name, lr: 0.5 });
      const v = tf.variable(tf.tensor1d([1, 2]));
      setLearningRate(optimizer, 0);
      optimizer.minimize(() => tf.sum(tf.mul(v, v)) as never, false, [v]);
      expect(Array.from(v.dataSync()), name).toEqual([1, 2]);
      setLearningRate(optimizer, 0.1);
      optimizer.minimize(() => tf.sum(tf.mul(v, v)) as never, false, [v]);
      expect(Array.from(v.dataSync()), name).not.toEqual([1, 2]);
      v.dispose();
      optimizer.dispose();
    }
  });

  it('a checkpoint taken after early stopping resumes to the same best weights', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ckpt-'));
    const first = tinyModel();
    const stopper = earlyStopping({ patience: 1, minDelta: 10 });
    const history = await fit(first, [stopper, checkpointHook(dir, 'fp', stopper)], 8);
    expect(history).toHaveLength(2);
    const expected = first.getWeights().map((w) => Array.from(w.dataSync()));
    const second = tinyModel();
    const optimizer = createOptimizer(tf, { name: 'adam', lr: 0.05 });
    const again = earlyStopping({ patience: 1, minDelta: 10 });
    const resumed = await restoreCheckpoint(tf, dir, 'fp', second, optimizer, again);
    expect(resumed).toMatchObject({ startEpoch: 2, stopped: true });
    await fitModel(tf, second, arraySource(data, 8, 11), arraySource(data, 8, 11), { epochs: 8, optimizer: { name: 'adam', lr: 0.05 }, numClasses: 3, hooks: [again], startEpoch: 8, history: resumed!.history, existingOptimizer: optimizer });
    expect(second.getWeights().map((w) => Array.from(w.dataSync()))).toEqual(expected);
    optimizer.dispose();
    first.dispose();
    second.dispose();
  });

  it('resuming from a mid-run checkpoint gives exactly the uninterrupted result (Adam state, shuffles, dropout)', async () => {
    const straight = tinyModel();
    await fit(straight, [], 4);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ckpt-'));
    const interrupted = tinyModel();
    await fit(interrupted, [checkpointHook(dir, 'fp')], 2);
    const resumed = tinyModel();
    const optimizer = createOptimizer(tf, { name: 'adam', lr: 0.05 });
    const state = await restoreCheckpoint(tf, dir, 'fp', resumed, optimizer);
    expect(state?.startEpoch).toBe(2);
    await fitModel(tf, resumed, arraySource(data, 8, 11), arraySource(data, 8, 11), { epochs: 4, optimizer: { name: 'adam', lr: 0.05 }, numClasses: 3, startEpoch: 2, history: state!.history, existingOptimizer: optimizer });
    const a = straight.getWeights().map((w) => Array.from(w.dataSync()));
    const b = resumed.getWeights().map((w) => Array.from(w.dataSync()));
    b.forEach((values, i) => values.forEach((v, j) => expect(v).toBeCloseTo(a[i][j], 5)));
    optimizer.dispose();
    [straight, interrupted, resumed].forEach((m) => m.dispose());
  });

  it('checkpoints every epoch', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ckpt-'));
    const model = tinyModel();
    await fit(model, [checkpointHook(dir, 'fp')], 2);
    const meta = JSON.parse((await import('node:fs')).readFileSync(path.join(dir, 'checkpoint.json'), 'utf8'));
    expect(meta.epochs).toBe(2);
    expect(meta.history).toHaveLength(2);
    model.dispose();
  });
});

/** `arraySource(data, 8, 11)` that counts the batches it yields. */
function countingSource() {
  const inner = arraySource(data, 8, 11);
  const counter = { batches: 0 };
  const source: BatchSource = {
    count: inner.count,
    batchSize: inner.batchSize,
    async *batches(epoch, options) {
      for await (const batch of inner.batches(epoch, options)) {
        counter.batches++;
        yield batch;
      }
    },
  };
  return { source, counter };
}

describe('evaluateSource after fitModel', () => {
  it('returns the last epoch\'s validation of the same weights without another pass, the same numbers a pass gives', async () => {
    const model = tinyModel();
    const { source: val, counter } = countingSource();
    const history = await fit(model, [], 2, undefined, val);
    const passes = counter.batches;
    expect(passes).toBe(2 * 6);
    const final = await evaluateSource(tf, model, val, 3);
    expect(counter.batches).toBe(passes); // no pass: the result of the last epoch's
    expect(final).toEqual({ loss: history.at(-1)!.valLoss, acc: history.at(-1)!.valAcc });
    // A real pass over an equal source gives the very same numbers.
    expect(await evaluateSource(tf, model, arraySource(data, 8, 11), 3)).toEqual(final);
    model.dispose();
  });

  it('passes over the source again once a weight changed, and over another source', async () => {
    const model = tinyModel();
    const { source: val, counter } = countingSource();
    await fit(model, [], 1, undefined, val);
    const first = await evaluateSource(tf, model, val, 3);
    expect(counter.batches).toBe(6);
    const weights = model.layers[2].getWeights().map((w) => tf.clone(w)); // getWeights() hands out the variables themselves
    const changed = weights.map((w) => tf.mul(w, 0.5));
    model.layers[2].setWeights(changed);
    tf.dispose(changed);
    const second = await evaluateSource(tf, model, val, 3);
    expect(counter.batches).toBe(12);
    expect(second).not.toEqual(first);
    model.layers[2].setWeights(weights);
    tf.dispose(weights);
    expect(await evaluateSource(tf, model, val, 3)).toEqual(first); // computed again: the same numbers
    expect(counter.batches).toBe(18);
    const other = countingSource();
    expect(await evaluateSource(tf, model, other.source, 3)).toEqual(first); // another source is passed over
    expect(other.counter.batches).toBe(6);
    model.dispose();
  });

  it('passes over the source again when fitModel validated with normalization stand-ins (BatchNormalization without scale)', async () => {
    const model = tfl.sequential({
      layers: [
        tfl.layers.dense({ units: 8, inputShape: [4], kernelInitializer: tfl.initializers.glorotUniform({ seed: 1 }) }),
        tfl.layers.batchNormalization({ scale: false }),
        tfl.layers.dense({ units: 3, activation: 'softmax', kernelInitializer: tfl.initializers.glorotUniform({ seed: 3 }) }),
      ],
    });
    const { source: val, counter } = countingSource();
    const history = await fit(model, [], 1, undefined, val);
    const final = await evaluateSource(tf, model, val, 3);
    expect(counter.batches).toBe(12);
    expect(final.acc).toBe(history.at(-1)!.valAcc);
    model.dispose();
  });

  it('checks the signal before reusing a result', async () => {
    const model = tinyModel();
    const val = arraySource(data, 8, 11);
    await fit(model, [], 1, undefined, val);
    await expect(evaluateSource(tf, model, val, 3, { signal: AbortSignal.abort() })).rejects.toBeInstanceOf(AbortedError);
    model.dispose();
  });
});

describe('fitModel ends cleanly', () => {
  /** Records how onTrainEnd saw the run, and which epochs ended. */
  function recorder() {
    const seen = { outcomes: [] as TrainState['outcome'][], epochs: [] as number[] };
    const hook: TrainHook = { onEpochEnd: (_s, logs) => void seen.epochs.push(logs.epoch), onTrainEnd: (state) => void seen.outcomes.push(state.outcome) };
    return { seen, hook };
  }

  /** Runs `run` on a fresh model (with early stopping holding a weight snapshot) and checks that it rejects and leaks no tensor. */
  async function expectCleanFailure(run: (model: ReturnType<typeof tinyModel>, hooks: TrainHook[]) => Promise<unknown>, expected: object) {
    const model = tinyModel();
    const { seen, hook } = recorder();
    const before = tf.memory().numTensors;
    await expect(run(model, [earlyStopping({ patience: 5 }), hook])).rejects.toMatchObject(expected);
    expect(tf.memory().numTensors).toBe(before);
    model.dispose();
    return seen;
  }

  it('an abort mid-epoch throws AbortedError, runs onTrainEnd, leaks nothing and writes no checkpoint', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ckpt-'));
    const controller = new AbortController();
    const aborter: TrainHook = { onBatchEnd: (state, batch) => void (state.epoch === 1 && batch.index === 2 && controller.abort()) };
    const seen = await expectCleanFailure((model, hooks) => fit(model, [...hooks, aborter, checkpointHook(dir, 'fp')], 4, controller.signal), { code: 'aborted' });
    expect(seen.outcomes).toEqual(['aborted']);
    expect(seen.epochs).toEqual([0]); // epoch 1 was cut short: no epoch-end hooks for it
    const meta = JSON.parse((await import('node:fs')).readFileSync(path.join(dir, 'checkpoint.json'), 'utf8'));
    expect(meta.epochs).toBe(1); // the checkpoint of the last whole epoch, none for the interrupted one
  });

  it('an abort during validation is noticed before the next validation batch', async () => {
    const controller = new AbortController();
    const inner = arraySource(data, 8, 11);
    let validationBatches = 0;
    const val: BatchSource = {
      count: inner.count,
      async *batches(epoch, options) {
        for await (const batch of inner.batches(epoch, options)) {
          if (++validationBatches === 2) controller.abort();
          yield batch;
        }
      },
    };
    const seen = await expectCleanFailure((model, hooks) => fit(model, hooks, 3, controller.signal, val), { code: 'aborted' });
    expect(validationBatches).toBe(2);
    expect(seen).toEqual({ outcomes: ['aborted'], epochs: [] });
  });

  it('evaluateSource throws AbortedError when its signal is aborted', async () => {
    const model = tinyModel();
    const before = tf.memory().numTensors;
    await expect(evaluateSource(tf, model, arraySource(data, 8, 11), 3, { signal: AbortSignal.abort() })).rejects.toBeInstanceOf(AbortedError);
    expect(tf.memory().numTensors).toBe(before);
    model.dispose();
  });

  it('a hook throwing in onBatchEnd fails the run, runs onTrainEnd and leaks nothing', async () => {
    const thrower: TrainHook = { onBatchEnd: (_s, batch) => { if (batch.index === 1) throw new Error('batch hook failed'); } };
    const seen = await expectCleanFailure((model, hooks) => fit(model, [...hooks, thrower]), { message: 'batch hook failed' });
    expect(seen).toEqual({ outcomes: ['failed'], epochs: [] });
  });

  it('a hook throwing in onEpochEnd fails the run, runs onTrainEnd and leaks nothing', async () => {
    const thrower: TrainHook = { onEpochEnd: (state) => { if (state.epoch === 1) throw new Error('epoch hook failed'); } };
    const seen = await expectCleanFailure((model, hooks) => fit(model, [...hooks, thrower]), { message: 'epoch hook failed' });
    expect(seen).toEqual({ outcomes: ['failed'], epochs: [0, 1] });
  });

  it('the NaN guard firing runs onTrainEnd and leaks nothing', async () => {
    const seen = await expectCleanFailure(
      (model, hooks) => {
        const nan = model.layers[0].getWeights().map((w) => tf.fill(w.shape, NaN));
        model.layers[0].setWeights(nan);
        tf.dispose(nan);
        return fit(model, [nanGuard(), ...hooks]);
      },
      { code: 'nan_loss' },
    );
    expect(seen.outcomes).toEqual(['failed']);
  });

  it('every onTrainEnd runs; the training error wins over theirs, and theirs surfaces after a clean run', async () => {
    const ends: string[] = [];
    const failingEnd = (name: string): TrainHook => ({ onTrainEnd: () => { ends.push(name); throw new Error(`${name} end failed`); } });
    const model = tinyModel();
    const thrower: TrainHook = { onBatchEnd: () => { throw new Error('batch hook failed'); } };
    await expect(fit(model, [thrower, failingEnd('a'), failingEnd('b')], 1)).rejects.toThrow('batch hook failed');
    expect(ends).toEqual(['a', 'b']);
    await expect(fit(model, [failingEnd('c')], 1)).rejects.toThrow('c end failed');
    model.dispose();
  });
});

describe('learningRateAt', () => {
  it('warms up linearly, then decays on a cosine to about zero', () => {
    const schedule = { warmup: 2, cosine: true };
    expect(learningRateAt(0, 10, 1, schedule)).toBeCloseTo(0.1);
    expect(learningRateAt(1, 10, 1, schedule)).toBeCloseTo(0.55);
    expect(learningRateAt(2, 10, 1, schedule)).toBeCloseTo(1);
    expect(learningRateAt(9, 10, 1, schedule)).toBeLessThan(0.05);
    expect(learningRateAt(5, 10, 1)).toBe(1);
  });
});

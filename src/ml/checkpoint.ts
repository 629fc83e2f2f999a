/**
 * Per-epoch checkpoints in a stage's work dir, so a run killed mid-stage resumes from the
 * last finished epoch: model weights, optimizer slots (Adam moments) and the history, written
 * to temp files and renamed (a kill during the write leaves the previous checkpoint intact).
 */
import { readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type * as TfCore from '@tensorflow/tfjs-core';
import { readJsonMaybe, writeJsonAtomic } from '../runtime/fsutil.js';
import type { Tf } from './backend.js';
import type { EarlyStopping, EpochLogs, TrainHook } from './train.js';

interface CheckpointMeta {
  /** Epochs finished (the next one to run). */
  epochs: number;
  /** Early stopping had decided to stop: resuming only restores the best weights. */
  stopped?: boolean;
  /** Early stopping's best epoch so far; its weights are in best.bin. */
  best?: { epoch: number; value: number; shapes: number[][] };
  history: EpochLogs[];
  weights: { shape: number[] }[];
  optimizer: { name: string; shape: number[]; dtype?: string }[];
  /** Identifies the training setup; a checkpoint from other params is ignored. */
  fingerprint: string;
}

async function writeTensors(file: string, tensors: TfCore.Tensor[]): Promise<void> {
  // Everything is stored as float32 (an int32 slot, like Adam's step count, is converted: its
  // raw bits read back as a float would be garbage). `Float32Array.from` also copies out of a
  // view into a larger buffer.
  const parts = await Promise.all(
    tensors.map(async (t) => {
      const data = Float32Array.from((await t.data()) as ArrayLike<number>);
      return Buffer.from(data.buffer);
    }),
  );
  await writeFile(`${file}.tmp`, Buffer.concat(parts));
  await rename(`${file}.tmp`, file);
}

/** Saves after every epoch (with early stopping's best weights and decision, when given). */
export function checkpointHook(dir: string, fingerprint: string, stopper?: EarlyStopping): TrainHook {
  return {
    async onEpochEnd(state) {
      const weights = state.model.getWeights();
      const slots = await state.optimizer.getWeights();
      await writeTensors(path.join(dir, 'weights.bin'), weights);
      await writeTensors(path.join(dir, 'optimizer.bin'), slots.map((s) => s.tensor));
      const best = stopper?.snapshot();
      if (best?.weights) await writeTensors(path.join(dir, 'best.bin'), best.weights);
      const meta: CheckpointMeta = {
        epochs: state.epoch + 1,
        stopped: state.stop,
        ...(best ? { best: { epoch: best.epoch, value: best.value, shapes: (best.weights ?? []).map((w) => w.shape) } } : {}),
        history: state.history,
        weights: weights.map((w) => ({ shape: w.shape })),
        optimizer: slots.map((s) => ({ name: s.name, shape: s.tensor.shape, dtype: s.tensor.dtype })),
        fingerprint,
      };
      await writeJsonAtomic(path.join(dir, 'checkpoint.json'), meta);
      // getWeights() makes a fresh scalar for the iteration count; the other slots are live variables.
      for (const slot of slots) if (slot.name === 'iter') slot.tensor.dispose();
    },
  };
}

/**
 * Restores model weights and optimizer slots from the last checkpoint, if there is one for
 * this fingerprint. Returns the epoch to continue from and the history so far.
 */
export async function restoreCheckpoint(
  tf: Tf,
  dir: string,
  fingerprint: string,
  model: { getWeights(): TfCore.Tensor[]; setWeights(w: TfCore.Tensor[]): void },
  optimizer: TfCore.Optimizer,
  stopper?: EarlyStopping,
): Promise<{ startEpoch: number; history: EpochLogs[]; stopped: boolean } | undefined> {
  const meta = await readJsonMaybe<CheckpointMeta>(path.join(dir, 'checkpoint.json'));
  if (!meta || meta.fingerprint !== fingerprint) return undefined;
  try {
    const weightBytes = await readFile(path.join(dir, 'weights.bin'));
    const slotBytes = await readFile(path.join(dir, 'optimizer.bin'));
    const current = model.getWeights();
    if (current.length !== meta.weights.length || current.some((w, i) => w.shape.join() !== meta.weights[i].shape.join())) return undefined;
    const split = (bytes: Buffer, shapes: number[][], dtypes: (string | undefined)[] = []) => {
      const all = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
      const expected = shapes.reduce((sum, shape) => sum + shape.reduce((a, b) => a * b, 1), 0);
      if (all.length !== expected) throw new Error(`checkpoint holds ${all.length} values, expected ${expected}`);
      let offset = 0;
      return shapes.map((shape, i) => {
        const size = shape.reduce((a, b) => a * b, 1);
        const values = all.slice(offset, offset + size); // a copy, not a view
        const dtype = dtypes[i] === 'int32' ? 'int32' : 'float32';
        const tensor = tf.tensor(dtype === 'int32' ? Int32Array.from(values) : values, shape, dtype);
        offset += size;
        return tensor;
      });
    };
    const weights = split(weightBytes, meta.weights.map((w) => w.shape));
    model.setWeights(weights);
    weights.forEach((w) => w.dispose());
    if (meta.optimizer.length) {
      const slots = split(slotBytes, meta.optimizer.map((s) => s.shape), meta.optimizer.map((s) => s.dtype));
      await optimizer.setWeights(meta.optimizer.map((s, i) => ({ name: s.name, tensor: slots[i] })));
      slots.forEach((s) => s.dispose()); // setWeights copies them into variables
    }
    if (stopper && meta.best) {
      const bestWeights = meta.best.shapes.length ? split(await readFile(path.join(dir, 'best.bin')), meta.best.shapes) : undefined;
      stopper.resume({ epoch: meta.best.epoch, value: meta.best.value, weights: bestWeights?.map((w) => tf.keep(w)) });
    }
    return { startEpoch: meta.epochs, history: meta.history, stopped: meta.stopped ?? false };
  } catch {
    return undefined; // an unreadable checkpoint only costs the epochs it held
  }
}

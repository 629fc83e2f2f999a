/**
 * Per-epoch checkpoints in a stage's work dir, so a run killed mid-stage resumes from the
 * last finished epoch: model weights, optimizer slots (Adam moments) and the history, written
 * to temp files and renamed (a kill during the write leaves the previous checkpoint intact).
 */
import { copyFile, readFile, rename, writeFile } from 'node:fs/promises';
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
  /**
   * Optimizer scalars that `getWeights` leaves out, by field name: Adam's `accBeta1`/`accBeta2`
   * (beta^t). TF.js `setWeights` rebuilds them as `pow(beta, iterations + 1)`, while training
   * builds them by repeated float32 multiplication: the two differ in the last bits, and so
   * would every later step. Saved as the exact float32 values and set after `setWeights`.
   */
  scalars?: Record<string, number>;
}

/** Fields of TF.js optimizers that are state but not in `getWeights()` (Adam, Adamax). */
const HIDDEN_SCALARS = ['accBeta1', 'accBeta2'] as const;

type ScalarHolder = Partial<Record<(typeof HIDDEN_SCALARS)[number], TfCore.Variable | undefined>>;

async function readHiddenScalars(optimizer: TfCore.Optimizer): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const name of HIDDEN_SCALARS) {
    const variable = (optimizer as unknown as ScalarHolder)[name];
    if (variable && !variable.isDisposed) out[name] = (await variable.data())[0]; // a float32, exact as a double
  }
  return out;
}

function writeHiddenScalars(tf: Tf, optimizer: TfCore.Optimizer, scalars: Record<string, number>): void {
  for (const name of HIDDEN_SCALARS) {
    const variable = (optimizer as unknown as ScalarHolder)[name];
    const value = scalars[name];
    if (variable && typeof value === 'number') tf.tidy(() => variable.assign(tf.scalar(value, 'float32')));
  }
}

const isShape = (v: unknown): v is number[] => Array.isArray(v) && v.every((n) => Number.isInteger(n) && n >= 0);
const isRecord = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v);

/** Shape check of checkpoint.json: anything else is no checkpoint (the epochs are recomputed). */
export function checkCheckpointMeta(value: unknown): value is CheckpointMeta {
  if (!isRecord(value)) return false;
  if (!Number.isInteger(value.epochs) || (value.epochs as number) < 0 || typeof value.fingerprint !== 'string') return false;
  if (value.stopped !== undefined && typeof value.stopped !== 'boolean') return false;
  if (!Array.isArray(value.history) || !value.history.every(isRecord)) return false;
  if (!Array.isArray(value.weights) || !value.weights.every((w) => isRecord(w) && isShape(w.shape))) return false;
  if (!Array.isArray(value.optimizer) || !value.optimizer.every((o) => isRecord(o) && typeof o.name === 'string' && isShape(o.shape) && (o.dtype === undefined || typeof o.dtype === 'string'))) return false;
  if (value.best !== undefined && !(isRecord(value.best) && Number.isInteger(value.best.epoch) && typeof value.best.value === 'number' && Array.isArray(value.best.shapes) && value.best.shapes.every(isShape))) return false;
  if (value.scalars !== undefined && !(isRecord(value.scalars) && Object.values(value.scalars).every((n) => typeof n === 'number' && Number.isFinite(n)))) return false;
  return true;
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
        scalars: await readHiddenScalars(state.optimizer),
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
  const meta = await readJsonMaybe<unknown>(path.join(dir, 'checkpoint.json'));
  if (!checkCheckpointMeta(meta) || meta.fingerprint !== fingerprint) return undefined;
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
      // After setWeights, which recomputes them less exactly (see CheckpointMeta.scalars).
      if (meta.scalars) writeHiddenScalars(tf, optimizer, meta.scalars);
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

/** The files of a checkpoint; checkpoint.json last (it names what the others hold). */
const CHECKPOINT_FILES = ['weights.bin', 'optimizer.bin', 'best.bin', 'checkpoint.json'] as const;

/** Epochs a checkpoint in `dir` holds (0 when there is none, or it is unreadable). */
async function checkpointEpochs(dir: string): Promise<number> {
  const meta = await readJsonMaybe<unknown>(path.join(dir, 'checkpoint.json'));
  return checkCheckpointMeta(meta) ? meta.epochs : 0;
}

/**
 * Copies the checkpoint in `from` to `to` (a work dir, or an entry being written), unless `to`
 * already holds one at least as far along: a run resumed from a shorter run's entry, then
 * killed, goes on from its own later checkpoint. Returns whether it copied.
 */
export async function copyCheckpoint(from: string, to: string): Promise<boolean> {
  const have = await checkpointEpochs(from);
  if (have === 0 || (await checkpointEpochs(to)) >= have) return false;
  for (const name of CHECKPOINT_FILES) {
    try {
      await copyFile(path.join(from, name), path.join(to, `${name}.tmp`));
      await rename(path.join(to, `${name}.tmp`), path.join(to, name));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error; // best.bin exists with early stopping only
    }
  }
  return true;
}

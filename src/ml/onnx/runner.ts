/**
 * Runs a converted graph (or any ONNX model with one float32 input) in onnxruntime-node on the
 * CPU: the fast engine for the frozen forward pass. onnxruntime is imported on first use only,
 * so a fully cached CLI run never loads its native binding.
 */
import os from 'node:os';
import type { InferenceSession } from 'onnxruntime-node';
import type { ConvertedGraph, Shape } from './types.js';

/** Options of `createOnnxRunner`. */
export interface OnnxRunnerOptions {
  /** Intra-op threads (one op's work split across cores). Default `os.availableParallelism()`. */
  threads?: number;
  /**
   * Let idle pool threads spin-wait for work instead of sleeping. Default false: spinning burns
   * the cores that image decoding and TF.js share with us; measured on a loaded 2-core machine,
   * MobileNetV2 at batch 16 ran 18 img/s spinning vs 22-25 img/s without.
   */
  spin?: boolean;
}

/** A loaded session. */
export interface OnnxRunner {
  /**
   * Runs a batch: `x` is NHWC float32 (as TF.js holds images) of dims `shape`, batch first —
   * or uint8 pixels for a graph converted with `pixels` (`mirror` then mirrors the batch
   * left-right, where the graph has a mirror input). Resolves to each graph output's data,
   * NHWC, in `outputShapes` order.
   */
  run(x: Float32Array | Uint8Array, shape: number[], options?: { mirror?: boolean }): Promise<Float32Array[]>;
  /** What the input takes: `float32`, or `uint8` pixels (a graph converted with `pixels`). */
  inputType: 'float32' | 'uint8';
  /** Whether `run` can mirror a uint8 batch. */
  mirrors: boolean;
  /** The input's shape, batch (and any symbolic dimension) null. */
  inputShape: Shape;
  /** Each output's shape, batch (and any symbolic dimension) null. */
  outputShapes: Shape[];
  /** Threads the session computes with. */
  threads: number;
  /** Releases the native session. */
  dispose(): Promise<void>;
}

type Ort = typeof import('onnxruntime-node');
let ortModule: Promise<Ort> | null = null;

/** onnxruntime-node, imported once on first use. */
function loadOrt(): Promise<Ort> {
  ortModule ??= import('onnxruntime-node').then((m) => ((m as { default?: Ort }).default?.InferenceSession ? (m as { default: Ort }).default : m));
  return ortModule;
}

function shapeOf(metadata: InferenceSession.ValueMetadata | undefined): Shape {
  if (!metadata || !metadata.isTensor) return [];
  return metadata.shape.map((d) => (typeof d === 'number' && d >= 0 ? d : null));
}

/**
 * Creates an onnxruntime session on `model` (a `convertLayersModel` result or ONNX bytes) with
 * `threads` intra-op threads, one inter-op thread and every graph optimization on.
 */
export async function createOnnxRunner(model: ConvertedGraph | Uint8Array, options: OnnxRunnerOptions = {}): Promise<OnnxRunner> {
  const ort = await loadOrt();
  const threads = Math.max(1, Math.floor(options.threads ?? os.availableParallelism()));
  const bytes = model instanceof Uint8Array ? model : model.graph.toBytes();
  const metadataOf = (list: readonly InferenceSession.ValueMetadata[], name: string) => list.find((m) => m.name === name);
  const session = await ort.InferenceSession.create(bytes, {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
    extra: { session: { intra_op: { allow_spinning: options.spin ? '1' : '0' } } },
  });
  const mirrorInput = model instanceof Uint8Array ? null : (model.mirrorInput ?? null);
  const inputNames = session.inputNames.filter((name) => name !== mirrorInput);
  if (inputNames.length !== 1) {
    await session.release();
    throw new Error(`the ONNX model has ${inputNames.length} inputs; the runner feeds exactly one (weights must be baked in)`);
  }
  const inputName = inputNames[0];
  const inputType = model instanceof Uint8Array ? (metadataOf(session.inputMetadata, inputName) as { type?: string } | undefined)?.type ?? 'float32' : (model.inputs[0].dtype ?? 'float32');
  if (inputType !== 'float32' && inputType !== 'uint8') {
    await session.release();
    throw new Error(`the ONNX model's input is ${inputType}; the runner feeds float32 or uint8`);
  }
  // The two values of the mirror input, made once.
  const mirrorFeeds = mirrorInput ? [false, true].map((on) => ({ [mirrorInput]: new ort.Tensor('bool', new Uint8Array([on ? 1 : 0]), []) })) : null;
  const outputNames = model instanceof Uint8Array ? [...session.outputNames] : model.outputs.map((o) => o.name);
  const inputShape = model instanceof Uint8Array ? shapeOf(metadataOf(session.inputMetadata, inputName)) : model.inputs[0].shape;
  const outputShapes = model instanceof Uint8Array ? outputNames.map((n) => shapeOf(metadataOf(session.outputMetadata, n))) : model.outputs.map((o) => o.shape);
  let released = false;
  return {
    inputShape,
    outputShapes,
    threads,
    inputType,
    mirrors: mirrorFeeds !== null,
    async run(x, shape, options = {}) {
      if (released) throw new Error('the ONNX runner was disposed');
      if ((x instanceof Uint8Array ? 'uint8' : 'float32') !== inputType) throw new Error(`the ONNX runner takes ${inputType} input, got ${x instanceof Uint8Array ? 'uint8' : 'float32'}`);
      if (options.mirror && !mirrorFeeds) throw new Error('the ONNX graph has no mirror input');
      const feeds = { [inputName]: x instanceof Uint8Array ? new ort.Tensor('uint8', x, shape) : new ort.Tensor('float32', x, shape), ...(mirrorFeeds ? mirrorFeeds[options.mirror ? 1 : 0] : {}) };
      const result = await session.run(feeds);
      return outputNames.map((name) => result[name].data as Float32Array);
    },
    async dispose() {
      if (released) return;
      released = true;
      await session.release();
    },
  };
}

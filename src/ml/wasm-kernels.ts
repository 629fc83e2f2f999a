/**
 * Training kernels that @tensorflow/tfjs-backend-wasm 4.22 lacks.
 *
 * `model.fit` of a small conv net (Conv2D, DepthwiseConv2D, BatchNormalization, Dense, Dropout,
 * pooling, ReLU6, Add, Concatenate) on wasm fails with "Kernel '…' not registered". Training such
 * a net with every cpu kernel the wasm backend lacks delegated and recorded showed that exactly
 * these three are reached: Conv2DBackpropFilter, DepthwiseConv2dNativeBackpropFilter and
 * DepthwiseConv2dNativeBackpropInput.
 *
 * Conv2DBackpropFilter is the expensive one (it is a matrix product of size
 * filter × batch·outHeight·outWidth × outChannels). It is computed as im2col (JS, writing
 * straight into the wasm heap) followed by the wasm backend's own BatchMatMul (XNNPACK, SIMD):
 * several times faster than the best loop order in plain JS, two orders of magnitude faster than
 * the cpu backend's kernel (which goes through TensorBuffer.get per element), and more precise
 * than a float32 JS loop. Depthwise gradients do no channel mixing, so plain JS loops are cheap.
 *
 * Two kernels the wasm backend has are replaced where a faster route gives the same numbers
 * (`WASM_SPEED_KERNELS`), measured on the fine-tuning top of MobileNetV2 (bench/train-top.ts):
 * Conv2DBackpropInput of a 1×1 stride-1 convolution, which the wasm backend computes with a
 * plain C loop, is one matrix product dy·Wᵀ on XNNPACK (W transposed in JS first: XNNPACK is
 * much slower with transposeB); and Tile, element by element in the wasm backend (FusedBatchNorm's
 * gradient tiles a [C] vector to the whole activation), is block copies. Identity (`tf.clone`,
 * which the engine calls for every tensor a gradient saves) shares the data with a reference
 * count, as the cpu backend's does, instead of copying it. Every other case is passed on to the
 * wasm backend's own kernel. (Sum and Mean over the leading axes, big in `tf.profile`, were
 * tried as JS row sums: bit-identical, but no faster than the wasm backend's transpose + sum.)
 *
 * Nothing is imported at runtime from tfjs here: the caller passes the tfjs-core instance the
 * wasm backend is registered with (see backend.ts for why the instance matters).
 */
import type * as TfCore from '@tensorflow/tfjs-core';
import { StageError } from '../runtime/errors.js';

type Tf = typeof TfCore;
type TensorInfo = TfCore.TensorInfo;
type Conv2DInfo = TfCore.backend_util.Conv2DInfo;

/** The parts of tfjs-backend-wasm's BackendWasm these kernels use (it is not exported as a type we can import lazily). */
interface WasmBackend {
  makeOutput(shape: number[], dtype: TfCore.DataType, memoryOffset?: number, values?: Float32Array): TensorInfo;
  typedArrayFromHeap(info: TensorInfo): Float32Array;
  disposeData(dataId: object, force?: boolean): boolean;
}

type Kernel = (args: KernelArgs) => TensorInfo;

interface KernelArgs {
  inputs: Record<string, TensorInfo>;
  backend: unknown;
  attrs: Record<string, unknown>;
}

/** Kernel names this module provides for the wasm backend (missing from tfjs-backend-wasm). */
export const WASM_TRAINING_KERNELS = ['Conv2DBackpropFilter', 'DepthwiseConv2dNativeBackpropFilter', 'DepthwiseConv2dNativeBackpropInput'] as const;

/** Kernels of tfjs-backend-wasm this module replaces by faster ones with the same results (they call the original for cases they do not cover). */
export const WASM_SPEED_KERNELS = ['Conv2DBackpropInput', 'Tile', 'Identity'] as const;

/** Kernel functions registered by this module, so that unregistering never removes a native one. */
const ours = new WeakSet<object>();

/** The wasm backend's own configs of the kernels we replaced, to fall back on and to restore. */
const replaced = new Map<string, TfCore.KernelConfig>();

/** Options of `registerWasmTrainingKernels`. */
export interface WasmKernelOptions {
  /**
   * Largest im2col buffer, in float32 elements, before Conv2DBackpropFilter works in chunks of
   * output rows; keeps the wasm heap small for big batches of big images. Default 2^23 (32 MiB).
   */
  maxPatchElements?: number;
}

/**
 * Registers the missing training kernels and the faster replacements for backend `wasm` on the
 * given tfjs-core instance. Idempotent; skips a missing kernel the wasm backend already provides
 * (a later tfjs-backend-wasm may add them natively). Returns the names registered by this call.
 * `unregisterWasmTrainingKernels` removes them again, restoring the replaced ones (tests use it
 * to register with other options, and to compare against the originals).
 */
export function registerWasmTrainingKernels(tf: Tf, options: WasmKernelOptions = {}): string[] {
  const maxPatchElements = options.maxPatchElements ?? 1 << 23;
  const missing: Record<(typeof WASM_TRAINING_KERNELS)[number], Kernel> = {
    Conv2DBackpropFilter: (args) => conv2dBackpropFilter(tf, args, maxPatchElements),
    DepthwiseConv2dNativeBackpropFilter: (args) => depthwiseBackpropFilter(tf, args),
    DepthwiseConv2dNativeBackpropInput: (args) => depthwiseBackpropInput(tf, args),
  };
  const added: string[] = [];
  for (const kernelName of WASM_TRAINING_KERNELS) {
    if (tf.getKernel(kernelName, 'wasm') !== undefined) continue;
    const kernelFunc = missing[kernelName] as unknown as TfCore.KernelFunc;
    ours.add(kernelFunc);
    tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc });
    added.push(kernelName);
  }
  const faster: Record<(typeof WASM_SPEED_KERNELS)[number], (args: KernelArgs, original: Kernel) => TensorInfo> = {
    Conv2DBackpropInput: (args, original) => conv2dBackpropInput(tf, args, original),
    Tile: (args, original) => tile(tf, args, original),
    Identity: (args, original) => identity(args, original),
  };
  for (const kernelName of WASM_SPEED_KERNELS) {
    const native = tf.getKernel(kernelName, 'wasm');
    if (native === undefined || ours.has(native.kernelFunc)) continue;
    const original = native.kernelFunc as unknown as Kernel;
    const kernelFunc = ((args: KernelArgs) => faster[kernelName](args, original)) as unknown as TfCore.KernelFunc;
    ours.add(kernelFunc);
    replaced.set(kernelName, native);
    tf.unregisterKernel(kernelName, 'wasm');
    // The original's setup (its cwrap of the C function) still has to run when the backend starts.
    tf.registerKernel({ kernelName, backendName: 'wasm', kernelFunc, setupFunc: native.setupFunc, disposeFunc: native.disposeFunc });
    added.push(kernelName);
  }
  return added;
}

/** Removes the kernels this module registered (those in `names`, default all of them), restoring the replaced originals. */
export function unregisterWasmTrainingKernels(tf: Tf, names: readonly string[] = [...WASM_TRAINING_KERNELS, ...WASM_SPEED_KERNELS]): void {
  for (const name of names) {
    const kernel = tf.getKernel(name, 'wasm');
    if (kernel && ours.has(kernel.kernelFunc)) {
      ours.delete(kernel.kernelFunc);
      tf.unregisterKernel(name, 'wasm');
      const native = replaced.get(name);
      if (native) {
        replaced.delete(name);
        tf.registerKernel(native);
      }
    }
  }
}

function requireFloat32(kernel: string, ...infos: TensorInfo[]): void {
  for (const info of infos) {
    if (info.dtype !== 'float32') {
      throw new StageError('backend_unsupported', `${kernel} on wasm supports float32 only, got ${info.dtype}`, { kernel, dtype: info.dtype });
    }
  }
}

/** dW[fh,fw,ci,co] = Σ over batch and output pixels of x[b, oh·s+fh−pad, ow·s+fw−pad, ci] · dy[b,oh,ow,co]. */
function conv2dBackpropFilter(tf: Tf, { inputs, backend, attrs }: KernelArgs, maxPatchElements: number): TensorInfo {
  const { x, dy } = inputs;
  const wasm = backend as WasmBackend;
  requireFloat32('Conv2DBackpropFilter', x, dy);
  const dataFormat = tf.backend_util.convertConv2DDataFormat((attrs.dataFormat as 'NHWC' | 'NCHW' | undefined) ?? 'NHWC');
  if (dataFormat !== 'channelsLast') {
    throw new StageError('backend_unsupported', 'Conv2DBackpropFilter on wasm supports NHWC (channelsLast) only', { kernel: 'Conv2DBackpropFilter' });
  }
  const info = tf.backend_util.computeConv2DInfo(
    x.shape as [number, number, number, number],
    attrs.filterShape as [number, number, number, number],
    attrs.strides as [number, number],
    1, // tfjs-core's conv2d gradient rejects dilations > 1 before it gets here
    attrs.pad as 'same',
    attrs.dimRoundingMode as 'floor' | undefined,
    false,
    'channelsLast',
  );
  const { filterHeight, filterWidth, inChannels, outChannels, batchSize, outHeight, outWidth } = info;
  const patchSize = filterHeight * filterWidth * inChannels;
  const rows = batchSize * outHeight * outWidth;
  const batchMatMul = tf.getKernel('BatchMatMul', 'wasm')?.kernelFunc as unknown as (args: KernelArgs) => TensorInfo;

  const pad = info.padInfo;
  // A 1×1 stride-1 convolution's patches are the input itself: no im2col copy at all.
  const isPointwise =
    filterHeight === 1 && filterWidth === 1 && info.strideHeight === 1 && info.strideWidth === 1 && pad.top === 0 && pad.left === 0 &&
    outHeight === info.inHeight && outWidth === info.inWidth;
  const rowsPerChunk = isPointwise ? rows : Math.max(1, Math.floor(maxPatchElements / patchSize));
  // dW = patchesᵀ·dy, computed as (dyᵀ·patches)ᵀ: XNNPACK's BatchMatMul is ~12× slower with
  // transposeA, and transposing dy (rows × outChannels) and the small result in JS is cheap.
  const sum = new Float32Array(patchSize * outChannels);
  for (let start = 0; start < rows; start += rowsPerChunk) {
    const count = Math.min(rowsPerChunk, rows - start);
    const patches = isPointwise ? null : im2col(wasm, x, info, start, count);
    const dyT = wasm.makeOutput([1, outChannels, count], 'float32');
    let product: TensorInfo | null = null;
    try {
      // Views are taken only after the last allocation: a growing wasm heap detaches older views.
      transpose(wasm.typedArrayFromHeap(dy), start * outChannels, count, outChannels, wasm.typedArrayFromHeap(dyT));
      const right = patches ?? { ...x, shape: [1, rows, inChannels] };
      product = batchMatMul({ inputs: { a: dyT, b: right }, backend, attrs: { transposeA: false, transposeB: false } });
      const values = wasm.typedArrayFromHeap(product); // [outChannels, patchSize]
      for (let co = 0; co < outChannels; co++) {
        const from = co * patchSize;
        for (let k = 0; k < patchSize; k++) sum[k * outChannels + co] += values[from + k];
      }
    } finally {
      if (patches) wasm.disposeData(patches.dataId);
      wasm.disposeData(dyT.dataId);
      if (product) wasm.disposeData(product.dataId);
    }
  }
  return wasm.makeOutput(info.filterShape, 'float32', undefined, sum);
}

/** Writes the `rows`×`columns` matrix at `source[offset…]` transposed into `target`. */
function transpose(source: Float32Array, offset: number, rows: number, columns: number, target: Float32Array): void {
  for (let r = 0; r < rows; r++) {
    const from = offset + r * columns;
    for (let c = 0; c < columns; c++) target[c * rows + r] = source[from + c];
  }
}

/**
 * Builds rows [start, start+count) of the im2col matrix ([1, count, fh·fw·ci], one row per
 * output pixel) directly in the wasm heap; padding positions stay zero.
 */
function im2col(wasm: WasmBackend, x: TensorInfo, info: Conv2DInfo, start: number, count: number): TensorInfo {
  const { inHeight, inWidth, inChannels, outHeight, outWidth, filterHeight, filterWidth, strideHeight, strideWidth } = info;
  const { top, left } = info.padInfo;
  const patchSize = filterHeight * filterWidth * inChannels;
  const patches = wasm.makeOutput([1, count, patchSize], 'float32');
  const out = wasm.typedArrayFromHeap(patches);
  const xs = wasm.typedArrayFromHeap(x);
  const padded = top > 0 || left > 0 || (outHeight - 1) * strideHeight + filterHeight > inHeight || (outWidth - 1) * strideWidth + filterWidth > inWidth;
  if (padded) out.fill(0); // malloc'd memory is not zeroed
  const pixelsPerImage = outHeight * outWidth;
  for (let row = 0; row < count; row++) {
    const pixel = start + row;
    const b = Math.floor(pixel / pixelsPerImage);
    const oh = Math.floor((pixel % pixelsPerImage) / outWidth);
    const ow = pixel % outWidth;
    const rowOffset = row * patchSize;
    for (let fh = 0; fh < filterHeight; fh++) {
      const ih = oh * strideHeight + fh - top;
      if (ih < 0 || ih >= inHeight) continue;
      // Taps fw..fw+n of one filter row read consecutive input pixels, and both the input and
      // the patch row keep channels innermost, so the in-bounds taps are one contiguous run.
      const fwFirst = Math.max(0, left - ow * strideWidth);
      const fwEnd = Math.min(filterWidth, inWidth + left - ow * strideWidth);
      if (fwEnd <= fwFirst) continue;
      let from = ((b * inHeight + ih) * inWidth + ow * strideWidth + fwFirst - left) * inChannels;
      let to = rowOffset + (fh * filterWidth + fwFirst) * inChannels;
      const end = to + (fwEnd - fwFirst) * inChannels;
      while (to < end) out[to++] = xs[from++];
    }
  }
  return patches;
}

function depthwiseInfo(tf: Tf, inShape: number[], filterShape: number[], attrs: Record<string, unknown>): Conv2DInfo {
  return tf.backend_util.computeConv2DInfo(
    inShape as [number, number, number, number],
    filterShape as [number, number, number, number],
    attrs.strides as [number, number],
    (attrs.dilations as [number, number] | undefined) ?? [1, 1],
    attrs.pad as 'same',
    attrs.dimRoundingMode as 'floor' | undefined,
    true,
  );
}

/** dW[fh,fw,c,m] = Σ x[b, oh·s+fh·d−pad, ow·s+fw·d−pad, c] · dy[b,oh,ow,c·M+m]. */
function depthwiseBackpropFilter(tf: Tf, { inputs, backend, attrs }: KernelArgs): TensorInfo {
  const { x, dy } = inputs;
  const wasm = backend as WasmBackend;
  requireFloat32('DepthwiseConv2dNativeBackpropFilter', x, dy);
  const info = depthwiseInfo(tf, x.shape, attrs.filterShape as number[], attrs);
  const { batchSize, inHeight, inWidth, inChannels, outHeight, outWidth, filterHeight, filterWidth } = info;
  const { strideHeight, strideWidth, dilationHeight, dilationWidth } = info;
  const { top, left } = info.padInfo;
  const multiplier = info.outChannels / inChannels;
  // Float64 sums: each filter tap adds batch·outHeight·outWidth products.
  const sum = new Float64Array(filterHeight * filterWidth * inChannels * multiplier);
  const xs = wasm.typedArrayFromHeap(x);
  const dys = wasm.typedArrayFromHeap(dy);
  for (let b = 0; b < batchSize; b++) {
    for (let oh = 0; oh < outHeight; oh++) {
      for (let fh = 0; fh < filterHeight; fh++) {
        const ih = oh * strideHeight + fh * dilationHeight - top;
        if (ih < 0 || ih >= inHeight) continue;
        for (let ow = 0; ow < outWidth; ow++) {
          const dyOffset = ((b * outHeight + oh) * outWidth + ow) * inChannels * multiplier;
          for (let fw = 0; fw < filterWidth; fw++) {
            const iw = ow * strideWidth + fw * dilationWidth - left;
            if (iw < 0 || iw >= inWidth) continue;
            const xOffset = ((b * inHeight + ih) * inWidth + iw) * inChannels;
            const wOffset = (fh * filterWidth + fw) * inChannels * multiplier;
            if (multiplier === 1) {
              for (let c = 0; c < inChannels; c++) sum[wOffset + c] += xs[xOffset + c] * dys[dyOffset + c];
            } else {
              for (let c = 0; c < inChannels; c++) {
                const value = xs[xOffset + c];
                const base = c * multiplier;
                for (let m = 0; m < multiplier; m++) sum[wOffset + base + m] += value * dys[dyOffset + base + m];
              }
            }
          }
        }
      }
    }
  }
  return wasm.makeOutput(info.filterShape, 'float32', undefined, Float32Array.from(sum));
}

/** dx[b,ih,iw,c] = Σ over the output pixels and taps that read it of dy[b,oh,ow,c·M+m] · w[fh,fw,c,m]. */
function depthwiseBackpropInput(tf: Tf, { inputs, backend, attrs }: KernelArgs): TensorInfo {
  const { dy, filter } = inputs;
  const wasm = backend as WasmBackend;
  requireFloat32('DepthwiseConv2dNativeBackpropInput', dy, filter);
  const info = depthwiseInfo(tf, attrs.inputShape as number[], filter.shape, attrs);
  const { batchSize, inHeight, inWidth, inChannels, outHeight, outWidth, filterHeight, filterWidth } = info;
  const { strideHeight, strideWidth, dilationHeight, dilationWidth } = info;
  const { top, left } = info.padInfo;
  const multiplier = info.outChannels / inChannels;
  const output = wasm.makeOutput(info.inShape, 'float32');
  // Scatter form: walk dy once in memory order. Each dx element receives at most
  // filterHeight·filterWidth·multiplier products, so float32 sums stay accurate.
  const dx = wasm.typedArrayFromHeap(output);
  const dys = wasm.typedArrayFromHeap(dy);
  const ws = wasm.typedArrayFromHeap(filter);
  dx.fill(0);
  for (let b = 0; b < batchSize; b++) {
    for (let oh = 0; oh < outHeight; oh++) {
      for (let fh = 0; fh < filterHeight; fh++) {
        const ih = oh * strideHeight + fh * dilationHeight - top;
        if (ih < 0 || ih >= inHeight) continue;
        for (let ow = 0; ow < outWidth; ow++) {
          const dyOffset = ((b * outHeight + oh) * outWidth + ow) * inChannels * multiplier;
          for (let fw = 0; fw < filterWidth; fw++) {
            const iw = ow * strideWidth + fw * dilationWidth - left;
            if (iw < 0 || iw >= inWidth) continue;
            const dxOffset = ((b * inHeight + ih) * inWidth + iw) * inChannels;
            const wOffset = (fh * filterWidth + fw) * inChannels * multiplier;
            if (multiplier === 1) {
              for (let c = 0; c < inChannels; c++) dx[dxOffset + c] += dys[dyOffset + c] * ws[wOffset + c];
            } else {
              for (let c = 0; c < inChannels; c++) {
                const base = c * multiplier;
                let value = 0;
                for (let m = 0; m < multiplier; m++) value += dys[dyOffset + base + m] * ws[wOffset + base + m];
                dx[dxOffset + c] += value;
              }
            }
          }
        }
      }
    }
  }
  return output;
}

/**
 * dx = dy · Wᵀ for a 1×1 stride-1 unpadded convolution (dy: [pixels, outChannels], W:
 * [inChannels, outChannels]) on XNNPACK; any other convolution goes to the wasm backend's kernel.
 */
function conv2dBackpropInput(tf: Tf, args: KernelArgs, original: Kernel): TensorInfo {
  const { inputs, backend, attrs } = args;
  const { dy, filter } = inputs;
  const dataFormat = tf.backend_util.convertConv2DDataFormat((attrs.dataFormat as 'NHWC' | 'NCHW' | undefined) ?? 'NHWC');
  if (dataFormat !== 'channelsLast' || dy.dtype !== 'float32' || filter.dtype !== 'float32' || filter.shape[0] !== 1 || filter.shape[1] !== 1) return original(args);
  const info = tf.backend_util.computeConv2DInfo(
    attrs.inputShape as [number, number, number, number],
    filter.shape as [number, number, number, number],
    attrs.strides as [number, number],
    1,
    attrs.pad as 'same',
    attrs.dimRoundingMode as 'floor' | undefined,
    false,
    'channelsLast',
  );
  const pointwise = info.strideHeight === 1 && info.strideWidth === 1 && info.padInfo.top === 0 && info.padInfo.left === 0 && info.outHeight === info.inHeight && info.outWidth === info.inWidth;
  if (!pointwise) return original(args);
  const wasm = backend as WasmBackend;
  const batchMatMul = tf.getKernel('BatchMatMul', 'wasm')!.kernelFunc as unknown as Kernel;
  const { inChannels, outChannels } = info;
  const pixels = info.batchSize * info.inHeight * info.inWidth;
  const filterT = wasm.makeOutput([1, outChannels, inChannels], 'float32');
  try {
    // Views only after the allocation: a growing wasm heap detaches older views.
    transpose(wasm.typedArrayFromHeap(filter), 0, inChannels, outChannels, wasm.typedArrayFromHeap(filterT));
    const product = batchMatMul({ inputs: { a: { ...dy, shape: [1, pixels, outChannels] }, b: filterT }, backend, attrs: { transposeA: false, transposeB: false } });
    return { ...product, shape: [...info.inShape] };
  } finally {
    wasm.disposeData(filterT.dataId);
  }
}

/**
 * Tile as block copies: the trailing dimensions that are not repeated are copied as one block
 * per position, and each repeated dimension copies the part of the output already written.
 */
function tile(tf: Tf, args: KernelArgs, original: Kernel): TensorInfo {
  const { inputs, backend, attrs } = args;
  const { x } = inputs;
  const reps = attrs.reps as number[];
  if (x.dtype !== 'float32' && x.dtype !== 'int32' && x.dtype !== 'bool') return original(args);
  const wasm = backend as WasmBackend;
  const inShape = x.shape;
  const rank = inShape.length;
  const outShape = inShape.map((d, i) => d * reps[i]);
  const out = wasm.makeOutput(outShape, x.dtype);
  if (tf.util.sizeFromShape(outShape) === 0) return out;
  // Views of the dtype's own element type (Int32Array, Uint8Array for bool); typed as Float32Array only for TS.
  const source = wasm.typedArrayFromHeap(x) as unknown as Float32Array;
  const target = wasm.typedArrayFromHeap(out) as unknown as Float32Array;
  const inStrides = stridesOf(inShape);
  const outStrides = stridesOf(outShape);
  // The untouched suffix: dimensions from `inner` on are not repeated and copy as one block.
  let inner = rank;
  while (inner > 0 && reps[inner - 1] === 1) inner--;
  const block = inner === 0 ? tf.util.sizeFromShape(inShape) : inStrides[inner - 1];
  const write = (dim: number, from: number, to: number): void => {
    if (dim === inner) {
      target.set(source.subarray(from, from + block), to);
      return;
    }
    for (let i = 0; i < inShape[dim]; i++) write(dim + 1, from + i * inStrides[dim], to + i * outStrides[dim]);
    const span = inShape[dim] * outStrides[dim];
    for (let r = 1; r < reps[dim]; r++) target.copyWithin(to + r * span, to, to + span);
  };
  write(0, 0, 0);
  return out;
}

/** Row-major strides in elements, one per dimension (the last is 1). */
function stridesOf(shape: number[]): number[] {
  const strides = new Array<number>(shape.length);
  let stride = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = stride;
    stride *= shape[i];
  }
  return strides;
}

/**
 * Shares the input's data (a reference more) instead of copying it, as the cpu backend's
 * Identity does. Only when the data was made with the tensor's own shape: some wasm kernels
 * read the shape stored with the data (FusedConv2D checks its bias' rank there), and a reshaped
 * tensor shares data stored under its source's shape, which a copy would not keep.
 */
function identity(args: KernelArgs, original: Kernel): TensorInfo {
  const { x } = args.inputs;
  const wasm = args.backend as { incRef?(dataId: object): void; dataIdMap?: { get(dataId: object): { shape: number[] } | undefined } };
  const stored = wasm.dataIdMap?.get(x.dataId)?.shape;
  const sameShape = stored !== undefined && stored.length === x.shape.length && stored.every((d, i) => d === x.shape[i]);
  if (x.dtype === 'string' || typeof wasm.incRef !== 'function' || !sameShape) return original(args);
  wasm.incRef(x.dataId);
  return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
}

/**
 * A compact, lossless encoding of a weights file for magnitude-pruned models.
 *
 * TF.js has no sparse weight format: a pruned kernel saved as `weights.bin` is as large as the
 * dense one, zeros included. This encoding stores each float32 weight either as raw bytes or, when
 * smaller, as a bitmap of its nonzero positions (1 bit per scalar) followed by the nonzero values,
 * so a kernel at sparsity `s` takes about `1/32 + (1 - s)` of its dense size.
 *
 * Layout (little-endian), weights in the order of the manifest group's `weights`:
 * ```
 * "FTSW"  u8 version=1  u8[3] reserved=0  u32 weight count
 * per weight:  u8 mode
 *   mode 0 (dense):   the weight's raw bytes, exactly as in weights.bin
 *   mode 1 (bitmap):  u32 nonzeros, ceil(n/8) bitmap bytes (bit i of byte j is scalar 8j+i),
 *                     nonzeros * 4 bytes of float32 values in position order
 * ```
 * model.json's manifest group carries `"encoding": "finetune-sparse-v1"`. Inside the artifact
 * store the file keeps the name `weights.bin`; an export with `sparse: true` names it
 * `weights.sparse.bin` and model.json's `format` is `finetune-sparse-layers-model`, so that what
 * leaves the toolkit says what it is (a default export is dense: a standard TF.js model).
 * `loadModel` (src/ml/io.ts) decodes such groups back to the dense bytes before building the
 * model. A plain `tf.loadLayersModel` does not know the encoding and fails loudly (the bytes do
 * not match the shapes) rather than loading garbage.
 *
 * Which models are saved this way: `saveModel` encodes when `isMarkedSparse(model)`, that is
 * when the prune stage called `markSparse`, or when `loadModel` read the model from a sparse file.
 * So evaluate and export re-save a pruned model compactly without knowing about pruning, and a
 * later stage that densifies the weights (fine-tune) only costs one mode byte per weight, since
 * each weight falls back to raw bytes when the bitmap would not be smaller.
 */
import { StageError } from '../../runtime/errors.js';
import { concatBytes } from '../bytes.js';

/** Value of a manifest group's `encoding` for this format. */
export const SPARSE_ENCODING = 'finetune-sparse-v1';

/** The manifest fields the codec needs of each weight (a subset of tfjs' WeightsManifestEntry). */
export interface SparseWeightSpec {
  name: string;
  shape: number[];
  dtype: string;
}

/** Bytes per scalar of the dtypes saveModel writes. */
const BYTES_PER_ELEMENT: Record<string, number> = { float32: 4, int32: 4, bool: 1, uint8: 1, uint16: 2, float16: 2, complex64: 8 };

const MAGIC = [0x46, 0x54, 0x53, 0x57]; // "FTSW"
const VERSION = 1;
const HEADER_BYTES = 12;
const MODE_DENSE = 0;
const MODE_BITMAP = 1;

const marked = new WeakSet<object>();

/** Marks a model so that `saveModel` writes its weights in the sparse encoding. */
export function markSparse(model: object): void {
  marked.add(model);
}

/** Whether `saveModel` should write `model`'s weights in the sparse encoding. */
export function isMarkedSparse(model: object): boolean {
  return marked.has(model);
}

function elementCount(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

function bytesOf(spec: SparseWeightSpec): number {
  const per = BYTES_PER_ELEMENT[spec.dtype];
  if (per === undefined) throw new StageError('model_bad_manifest', `weight "${spec.name}" has dtype ${spec.dtype}, which the sparse weights encoding does not know`, { weight: spec.name, dtype: spec.dtype });
  return elementCount(spec.shape) * per;
}

/**
 * Encodes dense weight bytes (the concatenation of `specs` in order, as tfjs saves them) into the
 * sparse format. Lossless in value: every scalar decodes to the same float32 bits, except that
 * -0 (what masking a negative weight by multiplication gives) comes back as +0, which computes
 * identically.
 */
export function encodeSparseWeights(dense: Uint8Array, specs: SparseWeightSpec[]): Uint8Array {
  const chunks: Uint8Array[] = [];
  const header = new Uint8Array(HEADER_BYTES);
  header.set(MAGIC, 0);
  header[4] = VERSION;
  new DataView(header.buffer).setUint32(8, specs.length, true);
  chunks.push(header);
  let offset = 0;
  for (const spec of specs) {
    const size = bytesOf(spec);
    if (offset + size > dense.byteLength) throw new StageError('internal_weights_mismatch', `the weight data ends before weight "${spec.name}"`, { weight: spec.name });
    const raw = dense.subarray(offset, offset + size);
    offset += size;
    const encoded = spec.dtype === 'float32' ? encodeBitmap(raw, elementCount(spec.shape)) : null;
    if (encoded && encoded.byteLength < size) {
      chunks.push(Uint8Array.of(MODE_BITMAP), encoded);
    } else {
      chunks.push(Uint8Array.of(MODE_DENSE), raw);
    }
  }
  if (offset !== dense.byteLength) throw new StageError('internal_weights_mismatch', `the weight data has ${dense.byteLength} bytes but the manifest describes ${offset}`, { bytes: dense.byteLength, expected: offset });
  return concatBytes(chunks);
}

/** u32 nonzeros + bitmap + values of one float32 weight given as raw little-endian bytes. */
function encodeBitmap(raw: Uint8Array, n: number): Uint8Array {
  const words = new Uint32Array(n);
  new Uint8Array(words.buffer).set(raw);
  let nonzeros = 0;
  // Both +0 and -0 count as zero (the sign bit is the only bit -0 sets).
  for (let i = 0; i < n; i++) if ((words[i] & 0x7fffffff) !== 0) nonzeros++;
  const out = new Uint8Array(4 + Math.ceil(n / 8) + nonzeros * 4);
  const view = new DataView(out.buffer);
  view.setUint32(0, nonzeros, true);
  const bitmap = out.subarray(4, 4 + Math.ceil(n / 8));
  let at = 4 + bitmap.byteLength;
  for (let i = 0; i < n; i++) {
    if ((words[i] & 0x7fffffff) === 0) continue;
    bitmap[i >> 3] |= 1 << (i & 7);
    view.setUint32(at, words[i], true);
    at += 4;
  }
  return out;
}

/**
 * Decodes the sparse format back to the dense bytes tfjs expects for `specs`. Throws a
 * `StageError` (`model_bad_weights`) naming `where` when the data is not this format, is
 * truncated, or does not match the manifest.
 */
export function decodeSparseWeights(data: Uint8Array, specs: SparseWeightSpec[], where = 'weights'): Uint8Array {
  const fail = (why: string, details: Record<string, unknown> = {}) =>
    new StageError('model_bad_weights', `${where}: ${why}; the sparse weights file is corrupt or does not belong to this model.json`, { where, ...details });
  if (data.byteLength < HEADER_BYTES || MAGIC.some((b, i) => data[i] !== b)) throw fail('it does not start with the sparse weights header');
  if (data[4] !== VERSION) throw fail(`it has version ${data[4]}, this program reads version ${VERSION}`);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const count = view.getUint32(8, true);
  if (count !== specs.length) throw fail(`it holds ${count} weights but the manifest lists ${specs.length}`);
  const total = specs.reduce((sum, spec) => sum + bytesOf(spec), 0);
  const dense = new Uint8Array(total);
  const denseView = new DataView(dense.buffer);
  let at = HEADER_BYTES;
  let out = 0;
  const need = (bytes: number, spec: SparseWeightSpec) => {
    if (at + bytes > data.byteLength) throw fail(`it ends inside weight "${spec.name}"`, { weight: spec.name });
  };
  for (const spec of specs) {
    const size = bytesOf(spec);
    need(1, spec);
    const mode = data[at++];
    if (mode === MODE_DENSE) {
      need(size, spec);
      dense.set(data.subarray(at, at + size), out);
      at += size;
    } else if (mode === MODE_BITMAP && spec.dtype === 'float32') {
      const n = elementCount(spec.shape);
      need(4, spec);
      const nonzeros = view.getUint32(at, true);
      const bitmapBytes = Math.ceil(n / 8);
      need(4 + bitmapBytes + nonzeros * 4, spec);
      const bitmap = data.subarray(at + 4, at + 4 + bitmapBytes);
      let value = at + 4 + bitmapBytes;
      let seen = 0;
      for (let i = 0; i < n; i++) {
        if ((bitmap[i >> 3] & (1 << (i & 7))) === 0) continue;
        if (++seen > nonzeros) break;
        denseView.setUint32(out + i * 4, view.getUint32(value, true), true);
        value += 4;
      }
      if (seen !== nonzeros) throw fail(`weight "${spec.name}" marks ${seen} nonzeros in its bitmap but records ${nonzeros}`, { weight: spec.name });
      at = value;
    } else {
      throw fail(`weight "${spec.name}" has an unknown storage mode ${mode}`, { weight: spec.name, mode });
    }
    out += size;
  }
  if (at !== data.byteLength) throw fail(`it has ${data.byteLength - at} bytes after the last weight`);
  return dense;
}

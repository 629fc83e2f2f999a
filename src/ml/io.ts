/**
 * Saving and loading tfjs-layers models without tfjs-node: `model.json` + one `weights.bin`
 * on disk through our own IOHandler, and loading from a local path or an http(s) URL.
 *
 * Loading checks what tf.loadLayersModel would otherwise trust: manifest paths must stay inside
 * the model's folder (a model.json from the internet must not make us read `../../.ssh/…` or
 * another host), and each weight group must have exactly the bytes its shapes and dtypes need,
 * so a truncated download fails here with a clear message, not later as garbage weights.
 */
import { mkdir, readFile, realpath, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { Logger } from 'pino';
import type { LayersModel } from '@tensorflow/tfjs-layers';
import type { io } from '@tensorflow/tfjs-core';
import type { Json } from '../runtime/types.js';
import { AbortedError, StageError } from '../runtime/errors.js';
import { useLayers, useTf } from './backend.js';
import { applyFreezeState, captureFreezeState, FREEZE_METADATA_KEY, readFreezeState } from './surgery.js';
import { decodeSparseWeights, encodeSparseWeights, isMarkedSparse, markSparse, SPARSE_ENCODING } from './prune/sparse-format.js';
import { concatBytes } from './bytes.js';

/** File name of the topology + manifest. */
export const MODEL_FILE = 'model.json';
/** File name of the single weights file `saveModel` writes. */
export const WEIGHTS_FILE = 'weights.bin';
/** File name of the weights with `encoding: 'sparse'`: not a file stock TF.js can read. */
export const SPARSE_WEIGHTS_FILE = 'weights.sparse.bin';
/**
 * model.json `format` with `encoding: 'sparse'`. Stock TF.js ignores `format`, so the weights
 * file name and its size (which do not match the shapes) are what make it fail loudly; the format
 * says to a reader why.
 */
export const SPARSE_MODEL_FORMAT = 'finetune-sparse-layers-model';

/** What `saveModel` may add. */
export interface SaveModelExtra {
  /** JSON merged into model.json's `userDefinedMetadata` (labels, preprocessing, provenance). */
  metadata?: Record<string, Json>;
  /** Also save the optimizer's state (to resume training). Default false. */
  includeOptimizer?: boolean;
  /**
   * How the weights are written. `auto` (default): in the sparse encoding when
   * `isMarkedSparse(model)`, under the usual names (artifacts only our `loadModel` reads);
   * `dense`: always plain float bytes, a standard TF.js layers model any loader reads;
   * `sparse`: the sparse encoding, labelled for outsiders (`format: finetune-sparse-layers-model`,
   * `weights.sparse.bin`) so that a stock loader fails rather than misreads.
   */
  encoding?: 'auto' | 'dense' | 'sparse';
}

/** Where `saveModel` wrote. */
export interface SavedModel {
  /** Absolute path of model.json. */
  modelPath: string;
  /** Absolute path of weights.bin. */
  weightsPath: string;
  /** Size of weights.bin in bytes (as written: after the sparse encoding, when used). */
  weightBytes: number;
}

/** Options of `loadModel`. */
export interface LoadModelOptions {
  /** Folder relative local paths resolve against. Default: the working directory. */
  baseDir?: string;
  /** Aborts downloads (the stage context's signal). */
  signal?: AbortSignal;
  /** Per-request timeout for http(s), in milliseconds. Default 60000. */
  timeoutMs?: number;
  /** Longest wait for the next bytes of an http(s) response, in milliseconds. Default 30000. */
  idleTimeoutMs?: number;
  /**
   * Most bytes one http(s) response may have; a longer one is cut off with `model_too_large`.
   * Default: env `PIPELINE_MAX_DOWNLOAD_BYTES`, else 4 GiB.
   */
  maxDownloadBytes?: number;
  /** Logs each file read, at debug level. */
  log?: Logger;
}

/**
 * Writes `dir/model.json` and `dir/weights.bin` (creating `dir`). The weights are written first,
 * so a model.json on disk always has its weights. The freeze state (BN layers held in inference
 * mode) is recorded in userDefinedMetadata for `loadModel` to restore.
 *
 * Pruned models: when `isMarkedSparse(model)` (the prune stage marks magnitude-pruned models;
 * `loadModel` marks models it read from a sparse file), weights.bin is written in the lossless
 * sparse encoding of `./prune/sparse-format.ts` and the manifest group says
 * `"encoding": "finetune-sparse-v1"`, so the zeros of pruned kernels cost no bytes on disk.
 */
export async function saveModel(model: LayersModel, dir: string, extra: SaveModelExtra = {}): Promise<SavedModel> {
  const tf = await useTf();
  const encoding = extra.encoding ?? 'auto';
  const sparse = encoding === 'sparse' || (encoding === 'auto' && isMarkedSparse(model));
  const labelled = encoding === 'sparse';
  const weightsFile = labelled ? SPARSE_WEIGHTS_FILE : WEIGHTS_FILE;
  const modelPath = path.resolve(dir, MODEL_FILE);
  const weightsPath = path.resolve(dir, weightsFile);
  await mkdir(path.dirname(modelPath), { recursive: true });
  let weightBytes = 0;
  const handler = tf.io.withSaveHandler(async (artifacts) => {
    const joined = artifacts.weightData === undefined ? new ArrayBuffer(0) : tf.io.CompositeArrayBuffer.join(artifacts.weightData);
    const { specs: weightSpecs, data: dense } = sortWeightsByName(artifacts.weightSpecs ?? [], new Uint8Array(joined));
    const data = sparse ? encodeSparseWeights(dense, weightSpecs) : dense;
    weightBytes = data.byteLength;
    const userDefinedMetadata = { ...(artifacts.userDefinedMetadata ?? {}), ...(extra.metadata ?? {}), [FREEZE_METADATA_KEY]: captureFreezeState(model) };
    const modelJson: io.ModelJSON = {
      modelTopology: artifacts.modelTopology as io.ModelJSON['modelTopology'],
      format: labelled ? SPARSE_MODEL_FORMAT : (artifacts.format ?? 'layers-model'),
      generatedBy: artifacts.generatedBy ?? `TensorFlow.js tfjs-layers v${tf.version_core}`,
      convertedBy: artifacts.convertedBy ?? null,
      weightsManifest: [{ paths: [weightsFile], weights: weightSpecs, ...(sparse ? { encoding: SPARSE_ENCODING } : {}) }],
      userDefinedMetadata,
    };
    if (artifacts.trainingConfig) modelJson.trainingConfig = artifacts.trainingConfig;
    await writeFile(weightsPath, data);
    await writeFile(modelPath, JSON.stringify(modelJson));
    return { modelArtifactsInfo: tf.io.getModelArtifactsInfoForJSON(artifacts) };
  });
  await model.save(handler, { includeOptimizer: extra.includeOptimizer ?? false });
  return { modelPath, weightsPath, weightBytes };
}

/**
 * Loads a layers model from a local `model.json` (or a folder holding one), a `file:` URL, or an
 * http(s) URL of a model.json; weight files are read relative to it. Restores the freeze state
 * `saveModel` recorded. Errors are `StageError`s: `model_not_found`, `model_fetch_failed`
 * (with `url` and `status`), `model_bad_manifest`, `model_bad_topology`, `model_bad_weights`, `model_too_large`.
 * Only local paths (a `file:` URL is one) and http(s) are read; a weight file a symbolic link takes
 * outside the model's folder is refused; a download is capped in size and fails when it stalls.
 * A manifest group with `"encoding": "finetune-sparse-v1"` is decoded (see saveModel) and the
 * model is marked so that saving it again keeps the sparse encoding.
 */
export async function loadModel(source: string, options: LoadModelOptions = {}): Promise<LayersModel> {
  const location = await resolveSource(source, options.baseDir);
  const text = new TextDecoder().decode(await readResource(location, 'model', options));
  let json: io.ModelJSON;
  try {
    json = JSON.parse(text) as io.ModelJSON;
  } catch (error) {
    // Never the parser's message: it quotes the bytes, and the file may be anything (/etc/passwd).
    throw badManifest(location, `not a TF.js model.json (invalid JSON at byte ${invalidJsonByte(text, error)})`);
  }
  checkTopology(json, location);
  const weightSpecs: io.WeightsManifestEntry[] = [];
  const buffers: Uint8Array[] = [];
  let sparse = false;
  for (const [groupIndex, group] of (json.weightsManifest ?? []).entries()) {
    const expected = groupBytes(group, groupIndex, location);
    const urls = await Promise.all(group.paths.map((p) => confineLocal(resolveWeightUrl(p, location), location)));
    let parts = await Promise.all(urls.map((url) => readResource(url, 'weights', options)));
    const encoding = (group as { encoding?: unknown }).encoding;
    if (encoding !== undefined) {
      if (encoding !== SPARSE_ENCODING) throw badManifest(location, `weight group ${groupIndex} has encoding ${JSON.stringify(encoding)}; this program reads only "${SPARSE_ENCODING}"`, { group: groupIndex });
      parts = [decodeSparseWeights(concatBytes(parts), group.weights, `${display(location)} weight group ${groupIndex}`)];
      sparse = true;
    }
    const actual = parts.reduce((sum, part) => sum + part.byteLength, 0);
    if (actual !== expected) {
      throw badManifest(location, `weight group ${groupIndex} (${group.paths.join(', ')}) has ${actual} bytes but its ${group.weights.length} weights need ${expected}; the files are truncated or do not belong to this model.json`, {
        group: groupIndex,
        bytes: actual,
        expectedBytes: expected,
      });
    }
    weightSpecs.push(...group.weights);
    buffers.push(...parts);
  }
  const weightData = concatBytes(buffers);
  const artifacts: io.ModelArtifacts = {
    modelTopology: json.modelTopology,
    format: json.format,
    generatedBy: json.generatedBy,
    convertedBy: json.convertedBy,
    trainingConfig: json.trainingConfig,
    userDefinedMetadata: json.userDefinedMetadata,
    weightSpecs,
    weightData: weightData.buffer as ArrayBuffer,
  };
  const tfl = await useLayers();
  let model: LayersModel;
  try {
    model = await tfl.loadLayersModel({ load: async () => artifacts });
  } catch (error) {
    throw new StageError('model_bad_topology', `cannot build the model in ${display(location)}: ${(error as Error).message.split('\n')[0]}`, { url: display(location) }, { cause: error });
  }
  applyFreezeState(model, readFreezeState(model.getUserDefinedMetadata()));
  if (sparse) markSparse(model);
  return model;
}

async function resolveSource(source: string, baseDir: string | undefined): Promise<URL> {
  if (/^https?:\/\//i.test(source)) {
    try {
      return new URL(source);
    } catch (error) {
      throw new StageError('model_not_found', `"${source}" is not a valid URL`, { source }, { cause: error });
    }
  }
  let local = source;
  // A `file:` URL is a local path and nothing more: resolved like one (a folder means its model.json).
  if (/^file:/i.test(source)) {
    try {
      local = fileURLToPath(source);
    } catch (error) {
      throw new StageError('model_not_found', `"${source}" is not a local file: URL; use a local path or an http(s) URL`, { source }, { cause: error });
    }
  } else if (/^[a-z][a-z0-9+.-]+:/i.test(source) && !/^[a-z]:[\\/]/i.test(source)) {
    throw new StageError('model_not_found', `cannot load a model from "${source}": use a local path or an http(s) URL`, { source });
  }
  let file = path.resolve(baseDir ?? process.cwd(), local);
  const info = await stat(file).catch(() => null);
  if (info?.isDirectory()) file = path.join(file, MODEL_FILE);
  return pathToFileURL(file);
}

/**
 * Resolves a manifest path against model.json's URL, refusing anything that leaves its folder:
 * absolute paths, other schemes or hosts, `..` segments (also percent-encoded), backslashes.
 */
function resolveWeightUrl(entry: string, location: URL): URL {
  const refuse = (why: string) => badManifest(location, `weights path "${entry}" ${why}; manifest paths must stay inside the model's folder`, { path: entry });
  if (typeof entry !== 'string' || entry === '') throw refuse('is empty');
  if (/^[a-z][a-z0-9+.-]*:/i.test(entry) || entry.startsWith('//')) throw refuse('names another location');
  if (entry.startsWith('/')) throw refuse('is absolute');
  if (entry.includes('\\') || /%(2f|5c)/i.test(entry)) throw refuse('contains a (possibly encoded) path separator');
  if (entry.split('/').some((segment) => /^(\.|%2e){2}$/i.test(segment))) throw refuse('goes up with ".."');
  const url = new URL(entry, location);
  const folder = new URL('.', location);
  if (url.protocol !== location.protocol || url.host !== location.host || !url.pathname.startsWith(folder.pathname)) throw refuse('leaves the folder');
  return url;
}

/**
 * A local weight file as its real path, refused when a symbolic link (of the file or a folder on
 * the way) takes it outside model.json's real folder. http(s) URLs are returned as they are.
 */
async function confineLocal(url: URL, location: URL): Promise<URL> {
  if (url.protocol !== 'file:') return url;
  const file = fileURLToPath(url);
  let real: string;
  let folder: string;
  try {
    folder = await realpath(path.dirname(fileURLToPath(location)));
    real = await realpath(file);
  } catch {
    return url; // missing: readResource reports it
  }
  if (real !== folder && !real.startsWith(folder + path.sep)) {
    throw badManifest(location, `weights path "${path.relative(path.dirname(fileURLToPath(location)), file)}" is a symbolic link to ${real}, outside the model's folder; copy the file into the folder`, { path: file, target: real });
  }
  return pathToFileURL(real);
}

/** Byte offset of the first thing JSON.parse refused (its message's position, else the first non-blank byte). */
function invalidJsonByte(text: string, error: unknown): number {
  const position = /at position (\d+)/.exec((error as Error).message)?.[1];
  const index = position !== undefined ? Number(position) : Math.max(0, text.search(/\S/));
  return Buffer.byteLength(text.slice(0, index));
}

const BYTES_PER_ELEMENT: Record<string, number> = { float32: 4, int32: 4, bool: 1, complex64: 8, uint8: 1, uint16: 2, float16: 2 };

/**
 * The weights in name order, not TF.js's trainable-first order: freezing or unfreezing a layer
 * then writes the same weights.bin bytes, which the content-addressed store keeps once (a freeze
 * stage costs a model.json, not a model). Loading maps model weights by name, so any order
 * loads; optimizer weights (restored by position) keep theirs, after the model's.
 */
function sortWeightsByName(specs: io.WeightsManifestEntry[], data: Uint8Array): { specs: io.WeightsManifestEntry[]; data: Uint8Array } {
  let offset = 0;
  const parts = specs.map((spec) => {
    const bytes = spec.shape.reduce((a, b) => a * b, 1) * (BYTES_PER_ELEMENT[spec.quantization?.dtype ?? spec.dtype] ?? 0);
    const part = { spec, start: offset, end: offset + bytes };
    offset += bytes;
    return part;
  });
  // Strings (no fixed size) or sizes that do not add up: keep TF.js's layout untouched.
  if (offset !== data.byteLength || parts.some((p) => p.end === p.start && p.spec.shape.reduce((a, b) => a * b, 1) > 0)) return { specs, data };
  // Optimizer state stays last and in its own order: TF.js restores it by position.
  const model = parts.filter((p) => p.spec.group !== 'optimizer');
  const optimizer = parts.filter((p) => p.spec.group === 'optimizer');
  const sorted = [...model.sort((a, b) => (a.spec.name < b.spec.name ? -1 : a.spec.name > b.spec.name ? 1 : 0)), ...optimizer];
  const out = new Uint8Array(data.byteLength);
  let at = 0;
  for (const part of sorted) {
    out.set(data.subarray(part.start, part.end), at);
    at += part.end - part.start;
  }
  return { specs: sorted.map((p) => p.spec), data: out };
}

/** Bytes a manifest group's weights need, from their shapes and (quantized) dtypes. */
function groupBytes(group: io.WeightsManifestConfig[number], index: number, location: URL): number {
  if (!group || !Array.isArray(group.paths) || group.paths.length === 0 || !Array.isArray(group.weights)) {
    throw badManifest(location, `weightsManifest[${index}] needs "paths" (a non-empty list) and "weights"`);
  }
  let total = 0;
  for (const spec of group.weights) {
    const dtype = spec?.quantization?.dtype ?? spec?.dtype;
    const ok = typeof spec?.name === 'string' && Array.isArray(spec.shape) && spec.shape.every((d) => Number.isInteger(d) && d >= 0) && BYTES_PER_ELEMENT[dtype] !== undefined;
    if (!ok) throw badManifest(location, `weightsManifest[${index}] has an invalid weight entry ${JSON.stringify(spec)} (needs name, shape of sizes, and a numeric dtype)`);
    total += spec.shape.reduce((a, b) => a * b, 1) * BYTES_PER_ELEMENT[dtype];
  }
  return total;
}

function checkTopology(json: io.ModelJSON, location: URL): void {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw badManifest(location, 'it is not a JSON object');
  if (json.format === 'graph-model') throw badManifest(location, 'it is a graph model (a converted SavedModel); only layers models can be loaded, cut and trained');
  if (json.modelTopology === null || typeof json.modelTopology !== 'object') throw badManifest(location, 'it has no "modelTopology"');
  // Without a manifest tfjs would quietly build the model with freshly initialized weights.
  if (!Array.isArray(json.weightsManifest)) throw badManifest(location, 'it has no "weightsManifest" list');
}

async function readResource(url: URL, what: 'model' | 'weights', options: LoadModelOptions): Promise<Uint8Array> {
  if (options.signal?.aborted) throw new AbortedError();
  const shown = display(url);
  if (url.protocol === 'file:') {
    try {
      const bytes = await readFile(fileURLToPath(url));
      options.log?.debug({ url: shown, bytes: bytes.byteLength }, 'model file read');
      return bytes;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' && what === 'model') throw new StageError('model_not_found', `no model.json at ${shown}`, { url: shown }, { cause: error });
      const why = code === 'ENOENT' ? 'the weight file listed in the manifest does not exist' : (error as Error).message;
      throw new StageError('model_fetch_failed', `cannot read ${shown}: ${why}`, { url: shown }, { cause: error });
    }
  }
  const timeoutMs = options.timeoutMs ?? 60_000;
  const signals = [AbortSignal.timeout(timeoutMs), ...(options.signal ? [options.signal] : [])];
  let response: Response;
  try {
    response = await fetch(url, { signal: AbortSignal.any(signals), redirect: 'follow' });
  } catch (error) {
    if (options.signal?.aborted) throw new AbortedError();
    const timedOut = (error as Error).name === 'TimeoutError';
    const why = timedOut ? `no response within ${timeoutMs / 1000}s` : describeFetchError(error);
    throw new StageError('model_fetch_failed', `cannot fetch ${shown}: ${why}`, { url: shown }, { cause: error });
  }
  if (!response.ok) {
    await response.body?.cancel();
    const details = { url: shown, status: response.status };
    if (what === 'model' && (response.status === 404 || response.status === 410)) {
      throw new StageError('model_not_found', `no model.json at ${shown} (HTTP ${response.status})`, details);
    }
    throw new StageError('model_fetch_failed', `cannot fetch ${shown}: HTTP ${response.status} ${response.statusText}`.trim(), details);
  }
  const maxBytes = options.maxDownloadBytes ?? defaultMaxDownloadBytes();
  const declared = Number(response.headers.get('content-length'));
  if (Number.isFinite(declared) && declared > maxBytes) {
    await response.body?.cancel();
    throw tooLarge(shown, maxBytes, response.status);
  }
  const idleMs = options.idleTimeoutMs ?? 30_000;
  const reader = response.body?.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    while (reader) {
      let idle: NodeJS.Timeout | undefined;
      const stalled = new Promise<'stalled'>((resolve) => (idle = setTimeout(() => resolve('stalled'), idleMs)));
      const next = await Promise.race([reader.read(), stalled]).finally(() => clearTimeout(idle));
      if (next === 'stalled') {
        await reader.cancel().catch(() => {});
        throw new StageError('model_fetch_failed', `download of ${shown} stalled: no bytes for ${idleMs / 1000}s after ${total} bytes`, { url: shown, status: response.status, bytes: total });
      }
      if (next.done) break;
      total += next.value.byteLength;
      if (total > maxBytes) {
        await reader.cancel().catch(() => {});
        throw tooLarge(shown, maxBytes, response.status);
      }
      chunks.push(next.value);
    }
  } catch (error) {
    if (error instanceof StageError) throw error;
    if (options.signal?.aborted) throw new AbortedError();
    throw new StageError('model_fetch_failed', `download of ${shown} broke off: ${describeFetchError(error)}`, { url: shown, status: response.status }, { cause: error });
  }
  const bytes = concatBytes(chunks);
  options.log?.debug({ url: shown, bytes: bytes.byteLength }, 'model file fetched');
  return bytes;
}

/** Default of `maxDownloadBytes`: env `PIPELINE_MAX_DOWNLOAD_BYTES` when a positive number, else 4 GiB. */
export function defaultMaxDownloadBytes(): number {
  const value = Number(process.env.PIPELINE_MAX_DOWNLOAD_BYTES);
  return Number.isFinite(value) && value > 0 ? value : 4 * 1024 ** 3;
}

function tooLarge(shown: string, maxBytes: number, status: number): StageError {
  return new StageError('model_too_large', `download of ${shown} is larger than the ${maxBytes} byte limit; raise max_download_mb (or PIPELINE_MAX_DOWNLOAD_BYTES) if the model really is this big`, { url: shown, status, maxBytes });
}

/** undici hides the useful part ("ECONNREFUSED") in `cause`. */
function describeFetchError(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ?? cause?.message ?? (error as Error).message;
}

function badManifest(location: URL, why: string, details: Record<string, unknown> = {}): StageError {
  return new StageError('model_bad_manifest', `${display(location)}: ${why}`, { url: display(location), ...details });
}

/** Local files as paths (what the user typed), URLs as URLs. */
function display(url: URL): string {
  return url.protocol === 'file:' ? fileURLToPath(url) : url.href;
}

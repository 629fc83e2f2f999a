/**
 * The remote artifact cache's seam: what the store needs from a remote (content-addressed blobs
 * and one manifest per cache key), the manifest's format and its shape check, and the typed
 * error every implementation throws. `S3Remote` (./s3.ts) is the one implementation today;
 * `./transfer.ts` moves whole entries through this interface and knows nothing about S3.
 */
import { PipelineError } from '../runtime/errors.js';

/**
 * Stable codes of `RemoteError`, each with one meaning:
 * - `remote_unreachable`: no answer from the endpoint (refused, DNS, timeout): check the URL / network
 * - `remote_auth`: credentials missing, unknown or refused
 * - `remote_corrupt`: bytes or JSON that do not match what they claim (a blob whose sha256
 *   differs, a manifest of the wrong shape, an upload the server saw differently)
 * - `remote_not_found`: the bucket (or a blob a manifest names) is not there
 * - `remote_config`: the remote URL or the client settings are invalid
 * - `remote_server`: the server failed (5xx) after the client's retries
 * - `remote_error`: anything else the server refused
 */
export type RemoteErrorCode =
  | 'remote_unreachable'
  | 'remote_auth'
  | 'remote_corrupt'
  | 'remote_not_found'
  | 'remote_config'
  | 'remote_server'
  | 'remote_error';

/** A remote cache operation failed; `message` says what to fix (which bucket, which variable). */
export class RemoteError extends PipelineError {
  declare readonly code: RemoteErrorCode;
  /** The remote, as `s3://bucket/prefix`. */
  readonly remote: string;
  /** What was being done: `put_blob`, `get_manifest`, … */
  readonly operation: string;
  /** The object key involved, when there is one. */
  readonly objectKey?: string;
  /** HTTP status of the server's answer, when there was one. */
  readonly status?: number;
  constructor(
    code: RemoteErrorCode,
    message: string,
    fields: { remote: string; operation: string; objectKey?: string; status?: number },
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
    this.remote = fields.remote;
    this.operation = fields.operation;
    if (fields.objectKey !== undefined) this.objectKey = fields.objectKey;
    if (fields.status !== undefined) this.status = fields.status;
  }
}

/** One file of an entry, as the remote manifest records it. */
export interface ManifestFile {
  /** Bytes. */
  size: number;
  /** Lowercase hex sha256 of the content: also the blob's name on the remote. */
  sha256: string;
}

/** What the remote stores per cache key: the entry's file list, and its local record verbatim. */
export interface RemoteManifest {
  format: typeof MANIFEST_FORMAT;
  /** The cache key this manifest describes. */
  key: string;
  /** Relative path (`/`-separated, inside the entry) -> size and digest. */
  files: Record<string, ManifestFile>;
  /** The entry's `_entry.json` as it was pushed (metrics, provides, …), restored on pull. */
  entry: Record<string, unknown>;
}

export const MANIFEST_FORMAT = 'finetune-pipeline/remote-entry@1';

/** The interface the store and `pipeline cache push|pull` depend on. */
export interface RemoteCache {
  /** Where it is, for messages and logs: `s3://bucket/prefix`. */
  readonly url: string;
  /** True when the blob named `digest` (hex sha256) is on the remote. */
  hasBlob(digest: string): Promise<boolean>;
  /**
   * Uploads `file` as the blob `digest` unless it is already there. Idempotent. `replace`
   * uploads even when an object of that name is there (one a download found corrupt).
   */
  putBlob(digest: string, file: string, options?: { replace?: boolean }): Promise<'uploaded' | 'present'>;
  /**
   * Downloads the blob into `destFile`, verifying its sha256; on a mismatch nothing is left at
   * `destFile` and a `remote_corrupt` error is thrown.
   */
  getBlob(digest: string, destFile: string): Promise<void>;
  /** Writes the manifest unless one exists for the key: the first writer wins. */
  putManifest(key: string, manifest: RemoteManifest): Promise<'written' | 'exists'>;
  /** The manifest of `key`, or null when the remote has none. */
  getManifest(key: string): Promise<RemoteManifest | null>;
  /** Keys that have a manifest. */
  listKeys(): Promise<string[]>;
}

const DIGEST = /^[0-9a-f]{64}$/;
const KEY = /^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$/;

export function isDigest(value: unknown): value is string {
  return typeof value === 'string' && DIGEST.test(value);
}

/** Cache keys become object names: only a safe alphabet, never `/` or `..`. */
export function isCacheKey(value: unknown): value is string {
  return typeof value === 'string' && KEY.test(value) && !value.includes('..');
}

/**
 * A relative path that stays inside the entry dir once joined: no absolute paths, no `..`, no
 * backslashes, no empty segments. A manifest from the network is untrusted input.
 */
export function isSafeRelativePath(rel: string): boolean {
  if (!rel || rel.startsWith('/') || rel.includes('\\') || rel.includes('\0')) return false;
  return rel.split('/').every((part) => part !== '' && part !== '.' && part !== '..');
}

/** Checks the shape of a manifest read from the remote; returns what is wrong, or null. */
export function checkManifest(value: unknown, key: string): string | null {
  if (!value || typeof value !== 'object' || Array.isArray(value)) return 'not a JSON object';
  const manifest = value as Record<string, unknown>;
  if (manifest.format !== MANIFEST_FORMAT) return `format is ${JSON.stringify(manifest.format)}, expected ${MANIFEST_FORMAT}`;
  if (manifest.key !== key) return `it describes key ${JSON.stringify(manifest.key)}, not ${key}`;
  if (!manifest.entry || typeof manifest.entry !== 'object' || Array.isArray(manifest.entry)) return 'entry is not an object';
  const files = manifest.files;
  if (!files || typeof files !== 'object' || Array.isArray(files)) return 'files is not an object';
  for (const [rel, file] of Object.entries(files as Record<string, unknown>)) {
    if (!isSafeRelativePath(rel)) return `file path ${JSON.stringify(rel)} escapes the entry`;
    const { size, sha256 } = (file ?? {}) as Record<string, unknown>;
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) return `files.${rel}.size is not a byte count`;
    if (!isDigest(sha256)) return `files.${rel}.sha256 is not a hex sha256`;
  }
  return null;
}

/** `s3://bucket/some/prefix` -> its parts; a trailing `/` is dropped. Throws `remote_config`. */
export function parseS3Url(url: string): { bucket: string; prefix: string } {
  const match = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(url);
  const bucket = match?.[1];
  // S3's rules for names (3-63 chars of a-z 0-9 . -), loosely: Swift and others accept more.
  if (!match || !bucket)
    throw new RemoteError('remote_config', `invalid remote ${JSON.stringify(url)}: expected s3://bucket or s3://bucket/prefix`, { remote: url, operation: 'parse_url' });
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$/.test(bucket))
    throw new RemoteError('remote_config', `invalid remote ${JSON.stringify(url)}: the bucket name ${JSON.stringify(bucket)} must be at least 2 letters, digits, '.', '_' or '-', starting with a letter or digit (S3 itself wants 3-63 of a-z 0-9 . -)`, { remote: url, operation: 'parse_url' });
  const prefix = (match[2] ?? '').replace(/\/+$/, '');
  if (prefix && !prefix.split('/').every((part) => part && part !== '.' && part !== '..'))
    throw new RemoteError('remote_config', `invalid remote ${JSON.stringify(url)}: the prefix has an empty, "." or ".." segment`, { remote: url, operation: 'parse_url' });
  return { bucket, prefix };
}

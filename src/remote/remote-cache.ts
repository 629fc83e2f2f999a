/**
 * `RemoteBackedCache`: the local cache with a `RemoteCache` (S3) behind it, through the
 * `ArtifactCache` hooks the planner and the executor call:
 * - `pull(key)` on a local miss: the manifest, then each blob the local CAS lacks (re-hashed by
 *   `getBlob` before use; blobs the CAS has are linked, not downloaded), assembled in tmp/ and
 *   renamed into cache/ unless an entry got there first (`pullEntry` + `commit(keepExisting)`).
 * - `push(key)` after a stage commits: blobs the remote lacks (HEAD then PUT), the manifest last,
 *   first writer wins (`pushEntry`). A blob a pull found corrupt on the remote is uploaded again
 *   over the bad object.
 * `openRemote` is the one place that builds the remote from the CLI's flags and environment.
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import type { PullOutcome, PushOutcome } from '../runtime/cache.js';
import { LocalCache } from '../runtime/local-cache.js';
import { isDigest, RemoteError, type RemoteCache } from './remote.js';
import { S3Remote } from './s3.js';
import { pullEntry, pushEntry } from './transfer.js';

export interface RemoteSettings {
  /** `s3://bucket/prefix`: `--remote`, else `$PIPELINE_REMOTE`. */
  url: string;
  /** S3 endpoint (`--remote-endpoint`); default `AWS_ENDPOINT_URL(_S3)`, else AWS itself. */
  endpoint?: string;
  env?: NodeJS.ProcessEnv;
}

/** The remote of `settings` (credentials from the standard AWS chain). Throws `remote_config`. */
export function openRemote(settings: RemoteSettings): S3Remote {
  return new S3Remote({ url: settings.url, ...(settings.endpoint ? { endpoint: settings.endpoint } : {}), ...(settings.env ? { env: settings.env } : {}) });
}

export class RemoteBackedCache extends LocalCache {
  readonly remote: string;
  /** Blobs a pull found corrupt on the remote: the next push of an entry with them replaces them. */
  private readonly corruptOnRemote = new Set<string>();
  /** The first "cannot reach" of this process: later calls fail at once instead of timing out again. */
  private unreachable: RemoteError | undefined;

  constructor(
    root: string,
    readonly client: RemoteCache,
  ) {
    super(root);
    this.remote = client.url;
  }

  async pull(key: string): Promise<PullOutcome | undefined> {
    return this.reachable(() => this.pullOnce(key));
  }

  async push(key: string): Promise<PushOutcome> {
    return this.reachable(() => this.pushOnce(key));
  }

  private async reachable<T>(work: () => Promise<T>): Promise<T> {
    if (this.unreachable) throw this.unreachable;
    try {
      return await work();
    } catch (error) {
      if (error instanceof RemoteError && error.code === 'remote_unreachable') this.unreachable = error;
      throw error;
    }
  }

  private async pullOnce(key: string): Promise<PullOutcome | undefined> {
    const tmp = await this.createTempDir(key);
    try {
      const pulled = await pullEntry(this.client, key, tmp, { localBlob: async (digest) => ((await this.blobs.isIntact(digest)) ? this.blobs.blobPath(digest) : undefined) }).catch((error: unknown) => {
        const digest = error instanceof RemoteError && error.code === 'remote_corrupt' && error.objectKey ? path.basename(error.objectKey) : '';
        if (isDigest(digest)) this.corruptOnRemote.add(digest);
        throw error;
      });
      if (!pulled) return undefined;
      const files = pulled.entry.files as Record<string, { sha256: string }>;
      const { files: _files, created: _created, ...draft } = pulled.entry as Record<string, unknown>;
      const meta = await this.commit(tmp, { ...(draft as object), key } as Parameters<LocalCache['commit']>[1], {
        digests: Object.fromEntries(Object.entries(files).map(([rel, file]) => [rel, file.sha256])),
        keepExisting: true,
      });
      // The pushed record's own shape is checked like any entry's before it is used.
      const check = await this.check(key);
      if (check.state !== 'ok') {
        await this.discard(key);
        throw new RemoteError('remote_corrupt', `the entry ${key} pulled from ${this.remote} is not a valid entry (${check.state === 'corrupt' ? check.reason : 'missing after the pull'}); delete its manifest there`, { remote: this.remote, operation: 'pull_entry', objectKey: key });
      }
      return { meta: check.meta.created === meta.created ? meta : check.meta, from: this.remote, downloaded: pulled.downloaded, bytes: pulled.bytes };
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  }

  private async pushOnce(key: string): Promise<PushOutcome> {
    const pushed = await pushEntry(this.client, key, this.entryDir(key), { replace: this.corruptOnRemote });
    const meta = await this.readMeta(key);
    for (const file of Object.values(meta?.files ?? {})) this.corruptOnRemote.delete(file.sha256);
    return { to: this.remote, uploaded: pushed.uploaded, present: pushed.present, bytesUploaded: pushed.bytesUploaded, manifest: pushed.manifest };
  }
}

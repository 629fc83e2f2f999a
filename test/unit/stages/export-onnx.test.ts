/** `export` with `format: [tfjs, onnx]`: model.onnx beside model.json, equal to the model. */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type * as TfCore from '@tensorflow/tfjs-core';
import { writeModelArtifact } from '../../../src/ml/artifact.js';
import { loadModel } from '../../../src/ml/io.js';
import { ModelProto } from '../../../src/ml/onnx/proto.js';
import { StageError } from '../../../src/runtime/errors.js';
import { compileStageValidator } from '../../../src/runtime/schema.js';
import type { StageInput } from '../../../src/runtime/types.js';
import { exportStage, type ExportManifest } from '../../../src/stages/export.js';
import { testdir, type TestDir } from '../../fixtures/testdir.js';
import { buildTinyShards, makeTinyModelArtifact, runStage, useTestBackend, type TinyShards } from './helpers.js';

let dir: TestDir;
let data: TinyShards;
let model: StageInput;
let tf: Awaited<ReturnType<typeof useTestBackend>>['tf'];
let tfl: Awaited<ReturnType<typeof useTestBackend>>['tfl'];

beforeAll(async () => {
  ({ tf, tfl } = await useTestBackend());
  dir = testdir();
  data = await buildTinyShards(dir.root, { normalize: 'tf' });
  model = await makeTinyModelArtifact(dir.root, { classes: data.classes, preprocess: data.spec, seed: 4 });
});
afterAll(() => dir.cleanup());

const json = async (file: string) => JSON.parse(await readFile(file, 'utf8'));

describe('export format onnx', () => {
  it('writes model.onnx beside model.json; onnxruntime gives the TF.js probabilities', async () => {
    const { result, ctx } = await runStage(exportStage, { root: dir.root, params: { format: ['tfjs', 'onnx'] }, inputs: [model] });
    const files = (await readdir(ctx.outDir)).sort();
    expect(files).toEqual(['export.json', 'labels.json', 'model.json', 'model.onnx', 'preprocess.json', 'summary.json', 'weights.bin']);
    const manifest = (await json(join(ctx.outDir, 'export.json'))) as ExportManifest;
    expect(manifest.formats).toEqual(['tfjs', 'onnx']);
    expect(manifest.files.sort()).toEqual(files);
    const bytes = await readFile(join(ctx.outDir, 'model.onnx'));
    expect(manifest.summary.onnxBytes).toBe(bytes.byteLength);
    expect(result.metrics?.onnxBytes).toBe(bytes.byteLength);

    const decoded = ModelProto.toObject(ModelProto.decode(bytes)) as { metadataProps: { key: string; value: string }[] };
    const metadata = Object.fromEntries(decoded.metadataProps.map((p) => [p.key, p.value]));
    expect(JSON.parse(metadata.classes)).toEqual(data.classes);
    expect(JSON.parse(metadata.preprocess).size).toEqual([8, 8]);
    expect(metadata.input_layout).toBe('NHWC');

    const session = await ort.InferenceSession.create(bytes, { intraOpNumThreads: 1 });
    const x = Float32Array.from({ length: 2 * 8 * 8 * 3 }, (_, i) => Math.sin(i));
    const out = await session.run({ [session.inputNames[0]]: new ort.Tensor('float32', x, [2, 8, 8, 3]) });
    await session.release();
    const tfModel = await loadModel(join(ctx.outDir, 'model.json'));
    const expected = (tfModel.predict(tf.tensor(x, [2, 8, 8, 3])) as TfCore.Tensor).dataSync();
    const actual = out[session.outputNames[0]].data as Float32Array;
    expect(actual.length).toBe(6);
    actual.forEach((v, i) => expect(Math.abs(v - expected[i])).toBeLessThanOrEqual(1e-6));
  });

  it('format [onnx] writes no tfjs files', async () => {
    const { ctx } = await runStage(exportStage, { root: dir.root, params: { format: ['onnx'] }, inputs: [model] });
    expect((await readdir(ctx.outDir)).sort()).toEqual(['export.json', 'labels.json', 'model.onnx', 'preprocess.json', 'summary.json']);
    const manifest = (await json(join(ctx.outDir, 'export.json'))) as ExportManifest;
    expect(manifest.summary).toMatchObject({ params: 127, weightBytes: 0 });
  });

  it('a layer ONNX cannot express fails with onnx_unsupported_layer naming it', async () => {
    const input = tfl.input({ shape: [8, 8, 3] });
    const rows = tfl.layers.reshape({ targetShape: [64, 3] }).apply(input);
    const temporal = tfl.layers.conv1d({ filters: 2, kernelSize: 3, name: 'temporal_conv' }).apply(rows);
    const pooled = tfl.layers.globalAveragePooling1d({}).apply(temporal);
    const head = tfl.layers.dense({ units: 3, activation: 'softmax' }).apply(pooled);
    const unsupported = tfl.model({ inputs: input, outputs: head as never });
    const artifactDir = dir.path('conv1d-model');
    await writeModelArtifact(artifactDir, unsupported, { classes: data.classes, preprocess: data.spec, lineage: ['build-model', 'train-head'] });
    const input1: StageInput = { ...model, dir: artifactDir };
    const error = await runStage(exportStage, { root: dir.root, params: { format: ['tfjs', 'onnx'] }, inputs: [input1] }).then(() => null, (e: unknown) => e);
    expect(error).toBeInstanceOf(StageError);
    expect(error).toMatchObject({ code: 'onnx_unsupported_layer', details: { layer: 'temporal_conv', className: 'Conv1D' } });
  });

  it('schema: format is a non-empty list of tfjs/onnx, default [tfjs]', () => {
    const validate = compileStageValidator(exportStage);
    const params: Record<string, unknown> = {};
    expect(validate(params)).toBe(true);
    expect(params.format).toEqual(['tfjs']);
    expect(validate({ format: ['onnx'] })).toBe(true);
    expect(validate({ format: [] })).toBe(false);
    expect(validate({ format: ['tflite'] })).toBe(false);
    expect(validate({ format: ['onnx', 'onnx'] })).toBe(false);
  });
});

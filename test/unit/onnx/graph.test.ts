import { describe, expect, it } from 'vitest';
import * as ort from 'onnxruntime-node';
import { OnnxGraph, float } from '../../../src/ml/onnx/graph.js';
import { ModelProto } from '../../../src/ml/onnx/proto.js';

describe('OnnxGraph', () => {
  it('writes a model onnxruntime runs: (x + w) * 2, clipped', async () => {
    const g = new OnnxGraph('t');
    const x = g.input('x', ['batch', 3]);
    const w = g.initializer('w', Float32Array.from([1, 2, 3]), [3]);
    const sum = g.op('Add', [x, w]);
    const twice = g.op('Mul', [sum, g.floats([2])]);
    const clipped = g.op('Clip', [twice, g.floats([0]), g.floats([7])]);
    const scaled = g.op('LeakyRelu', [clipped], { alpha: float(0.5) });
    g.output(scaled, 'y', ['batch', 3]);
    const bytes = g.toBytes({ source: 'test' });
    const decoded = ModelProto.toObject(ModelProto.decode(bytes), { longs: Number }) as { graph: { node: unknown[] }; metadataProps: { key: string }[] };
    expect(decoded.graph.node).toHaveLength(5);
    expect(decoded.metadataProps[0].key).toBe('source');
    const session = await ort.InferenceSession.create(bytes);
    const out = await session.run({ x: new ort.Tensor('float32', Float32Array.from([0, 1, 2, -5, 0, 9]), [2, 3]) });
    expect(Array.from(out.y.data as Float32Array)).toEqual([2, 6, 7, 0, 4, 7]);
    await session.release();
  });

  it('keeps names unique and refuses a non-integer int attribute', () => {
    const g = new OnnxGraph();
    expect(g.unique('a')).toBe('a');
    expect(g.unique('a')).toBe('a__1');
    expect(() => g.op('LeakyRelu', ['a'], { alpha: 0.5 })).toThrow(/float\(\)/);
  });
});

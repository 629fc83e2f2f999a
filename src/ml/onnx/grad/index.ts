/** The emitter of each tfjs layer class the training graph can differentiate. */
import { activationLayer } from './activation.js';
import type { LayerEmitter } from './context.js';
import { conv2d, depthwiseConv2d, separableConv2d } from './conv.js';
import { dense } from './dense.js';
import { add, average, concatenate, multiply } from './merge.js';
import { batchNormalization } from './normalization.js';
import { averagePooling2d, globalAveragePooling2d, globalMaxPooling2d, maxPooling2d } from './pooling.js';
import { cropping2d, dropout, reshape, zeroPadding2d } from './shape.js';

/** Layer class name → emitter. A class missing here is refused (UnsupportedLayerError). */
export const emitters: Readonly<Record<string, LayerEmitter>> = {
  Conv2D: conv2d,
  DepthwiseConv2D: depthwiseConv2d,
  SeparableConv2D: separableConv2d,
  Dense: dense,
  BatchNormalization: batchNormalization,
  Activation: activationLayer,
  ReLU: activationLayer,
  LeakyReLU: activationLayer,
  Softmax: activationLayer,
  Add: add,
  Multiply: multiply,
  Average: average,
  Concatenate: concatenate,
  GlobalAveragePooling2D: globalAveragePooling2d,
  GlobalMaxPooling2D: globalMaxPooling2d,
  MaxPooling2D: maxPooling2d,
  AveragePooling2D: averagePooling2d,
  Flatten: reshape,
  Reshape: reshape,
  ZeroPadding2D: zeroPadding2d,
  Cropping2D: cropping2d,
  Dropout: dropout,
};

// Type declarations of the public API of index.js. The message and service types under types/ are
// generated from the package's .proto files (scripts/prepare.js) with the options index.js loads them
// with, so field names (snake_case), enums (strings) and 64-bit integers (numbers) match at run time.
// `Foo` is what a request may hold (optional fields, enums as names or numbers); `Foo__Output` is what
// a reply holds (every field present, enums as names).
/// <reference types="node" />

import * as grpc from '@grpc/grpc-js';
import type { Options } from '@grpc/proto-loader';

import type { BacktestWindow__Output } from './types/lstm_stack/v1/BacktestWindow';
import type { DatasetChunk } from './types/lstm_stack/v1/DatasetChunk';
import type { DatasetHeader } from './types/lstm_stack/v1/DatasetHeader';
import type { DatasetInfo__Output } from './types/lstm_stack/v1/DatasetInfo';
import type { DatasetServiceClient } from './types/lstm_stack/v1/DatasetService';
import type { DeleteDatasetResponse__Output } from './types/lstm_stack/v1/DeleteDatasetResponse';
import type { DeleteModelResponse__Output } from './types/lstm_stack/v1/DeleteModelResponse';
import type { DType } from './types/lstm_stack/v1/DType';
import type { ExportInfo__Output } from './types/lstm_stack/v1/ExportInfo';
import type { ImportHeader } from './types/lstm_stack/v1/ImportHeader';
import type { Layout } from './types/lstm_stack/v1/Layout';
import type { ModelInfo__Output } from './types/lstm_stack/v1/ModelInfo';
import type { ModelServiceClient } from './types/lstm_stack/v1/ModelService';
import type { ScalerInfo__Output } from './types/lstm_stack/v1/ScalerInfo';
import type { ScalerKind } from './types/lstm_stack/v1/ScalerKind';
import type { ScalerServiceClient } from './types/lstm_stack/v1/ScalerService';
import type { ScalerSpec } from './types/lstm_stack/v1/ScalerSpec';
import type { Tensor, Tensor__Output } from './types/lstm_stack/v1/Tensor';
import type { TrainEvent__Output } from './types/lstm_stack/v1/TrainEvent';
import type { TrainRequest } from './types/lstm_stack/v1/TrainRequest';
import type { ProtoGrpcType } from './types/model';

// Every generated message, enum and service type, for callers building requests by hand.
export type * from './types/lstm_stack/v1/index';

/** The dtype names the codec knows (DTYPE_UNSPECIFIED is not one). */
export type DTypeName = 'FLOAT32' | 'FLOAT64' | 'INT32' | 'INT64';
/** A typed array the codec encodes as its own dtype. */
export type NumericTypedArray = Float64Array | Float32Array | Int32Array | BigInt64Array;
/** Nested arrays of numbers, any depth (rectangular; ragged input throws). */
export type NestedNumbers = number | bigint | readonly NestedNumbers[];
/** What the codec encodes: a nested array (shape inferred) or a typed array (shape given or 1-D). */
export type ArrayLike = readonly NestedNumbers[] | NumericTypedArray;

/** The Tensor message encodeTensor makes: little-endian bytes in `raw`. */
export interface EncodedTensor {
  dtype: DTypeName;
  shape: number[];
  raw: Buffer;
}

/** A decoded tensor: a flat typed array (INT64 as BigInt64Array) and its shape. */
export interface DecodedTensor {
  dtype: DTypeName;
  shape: number[];
  data: NumericTypedArray;
}

export interface EncodeOptions {
  shape?: readonly number[];
  dtype?: DTypeName | DType;
}

export function encodeTensor(data: ArrayLike, options?: EncodeOptions): EncodedTensor;
export function decodeTensor(tensor: Tensor | Tensor__Output): DecodedTensor;
/** Nested plain arrays of numbers (a bare number for a 0-d tensor). */
export function toNested(tensor: DecodedTensor | Tensor | Tensor__Output): any;
export function inferShape(nested: readonly NestedNumbers[]): number[];

export interface NpyHeader {
  dtype: DTypeName;
  shape: number[];
  offset: number;
}
export function readNpyHeader(fd: number): NpyHeader;
export function npyChunks(file: string, options?: { rowsPerChunk?: number }): Generator<EncodedTensor, void, unknown>;
export function csvChunks(
  file: string,
  options?: { rowsPerChunk?: number; onColumns?: (names: string[]) => void },
): AsyncGenerator<EncodedTensor, void, unknown>;

/** PEM as a Buffer, or the path of a PEM file. */
export type Pem = Buffer | string;

export interface TlsOptions {
  /** TLS with the system roots. */
  tls?: boolean;
  /** PEM to trust instead of the system roots (turns TLS on). */
  rootCert?: Pem;
  /** Client certificate and key, for mutual TLS. */
  certChain?: Pem;
  privateKey?: Pem;
}

export function channelCredentials(options?: TlsOptions): grpc.ChannelCredentials;

export interface ClientOptions extends TlsOptions {
  /** host:port of the scaler service (default: $LSTM_STACK_SCALER_ADDRESS). */
  scalerAddress?: string;
  /** host:port of the model service, which serves DatasetService too (default: $LSTM_STACK_MODEL_ADDRESS). */
  modelAddress?: string;
  /** Sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** The TLS name to check when it differs from the address. */
  serverNameOverride?: string;
  /** Send/receive limit per message (default 64 MiB, the services' default). */
  maxMessageBytes?: number;
  /** Deadline of each unary call (default 30 s). */
  deadlineMs?: number;
  /** Deadline of a whole Train stream or upload (default 1 h). */
  trainDeadlineMs?: number;
  /** The folder holding protos/ (default: this package's own). */
  protoRoot?: string;
}

export interface CallOptions {
  deadlineMs?: number;
}

export type ServiceName = 'scaler' | 'model' | 'datasets';

export interface FitScalerOptions extends CallOptions {
  data: ArrayLike;
  kind?: ScalerKind;
  layout?: Layout;
  scalerId?: string;
  /** Per-kind parameters merged into the spec, e.g. `{ minmax: { feature_min: -1, feature_max: 1 } }`. */
  params?: Omit<ScalerSpec, 'kind' | 'layout'>;
  shape?: readonly number[];
}

export interface TensorCallOptions extends CallOptions {
  version?: number;
  shape?: readonly number[];
}

export interface Prediction {
  model_id: string;
  version: number;
  values: any | null;
  probabilities: any | null;
  labels: any | null;
}

export interface ForecastOptions extends TensorCallOptions {
  /** Forecast after the last rows of a stored series dataset instead of `history`. */
  datasetId?: string;
  /** Steps to forecast (0: the model's horizon). */
  horizon?: number;
}

export interface Forecast {
  model_id: string;
  version: number;
  horizon: number;
  target_columns: number[];
  /** series x horizon x targets */
  point: number[][][];
  /** The quantile levels of a quantile model (empty otherwise). */
  levels: number[];
  /** series x horizon x targets x levels, or null for a point model. */
  quantiles: number[][][][] | null;
}

export interface BacktestOptions extends TensorCallOptions {
  windows?: number;
  originStep?: number;
  horizon?: number;
  seasonLength?: number;
  /** Train the version's settings on the rows before every origin (give it a long deadline). */
  retrain?: boolean;
}

export interface BacktestWindowResult {
  index: number;
  origin: number;
  metrics: BacktestWindow__Output['metrics'];
  /** horizon x targets */
  forecast: number[][] | null;
  actual: number[][] | null;
  lower: number[][] | null;
  upper: number[][] | null;
  model_id: string;
  model_version: number;
}

export interface BacktestResult {
  windows: BacktestWindowResult[];
  summary: { windows: number; metrics: { [key: string]: number } };
}

export interface UploadOptions extends CallOptions {
  header: DatasetHeader;
  /** Chunks without the header: `{ series }` or `{ x, y }`. */
  chunks: Iterable<Omit<DatasetChunk, 'header'>> | AsyncIterable<Omit<DatasetChunk, 'header'>>;
}

export interface ExportOptions extends CallOptions {
  format?: 'ONNX' | 'SAVED_MODEL';
  version?: number;
}

export interface ImportOptions extends CallOptions, Omit<ImportHeader, 'head'> {
  head?: ImportHeader['head'];
  chunkBytes?: number;
}

export class LstmStackClient {
  constructor(options?: ClientOptions);

  readonly proto: ProtoGrpcType['lstm_stack']['v1'];
  readonly token: string | null;
  deadlineMs: number;
  trainDeadlineMs: number;
  readonly scaler: ScalerServiceClient | null;
  readonly model: ModelServiceClient | null;
  readonly datasets: DatasetServiceClient | null;

  /** Any unary RPC by name: `call('scaler', 'GetScaler', { scaler_id: 'x' })`. */
  call<T = any>(service: ServiceName, method: string, request: object, options?: CallOptions): Promise<T>;
  /** Wait until the configured channels are connected. */
  waitForReady(deadlineMs?: number): Promise<void[]>;

  fitScaler(options: FitScalerOptions): Promise<ScalerInfo__Output>;
  transform(scalerId: string, data: ArrayLike, options?: TensorCallOptions): Promise<any>;
  inverseTransform(scalerId: string, data: ArrayLike, options?: TensorCallOptions): Promise<any>;

  /** The Train stream itself: `for await`, or 'data'/'error'/'end'; `.cancel()` stops training. */
  trainStream(request: TrainRequest, options?: CallOptions): grpc.ClientReadableStream<TrainEvent__Output>;
  /** Train to completion; resolves with the new version's ModelInfo. */
  train(
    request: TrainRequest,
    options?: CallOptions & { onEvent?: (event: TrainEvent__Output) => void },
  ): Promise<ModelInfo__Output>;
  predict(modelId: string, x: ArrayLike, options?: TensorCallOptions): Promise<Prediction>;
  forecast(modelId: string, history: ArrayLike | null | undefined, options?: ForecastOptions): Promise<Forecast>;
  backtest(modelId: string, series: ArrayLike, options?: BacktestOptions): Promise<BacktestResult>;
  getModel(modelId: string, options?: { version?: number } & CallOptions): Promise<ModelInfo__Output>;
  deleteModel(modelId: string, options?: { version?: number } & CallOptions): Promise<DeleteModelResponse__Output>;

  uploadDataset(options: UploadOptions): Promise<DatasetInfo__Output>;
  uploadSeriesFile(
    file: string,
    options?: { columns?: string[]; rowsPerChunk?: number } & CallOptions,
  ): Promise<DatasetInfo__Output>;
  uploadSupervisedFiles(
    xFile: string,
    yFile: string,
    options?: { rowsPerChunk?: number } & CallOptions,
  ): Promise<DatasetInfo__Output>;
  getDataset(datasetId: string, options?: CallOptions): Promise<DatasetInfo__Output>;
  listDatasets(options?: { pageSize?: number } & CallOptions): Promise<DatasetInfo__Output[]>;
  deleteDataset(datasetId: string, options?: CallOptions): Promise<DeleteDatasetResponse__Output>;

  /** Stream a version to `filePath`; the file appears whole (size and sha256 checked) or not at all. */
  exportModel(modelId: string, filePath: string, options?: ExportOptions): Promise<ExportInfo__Output>;
  /** Stream a Keras archive (.keras) in as a new version. */
  importModel(filePath: string, options?: ImportOptions): Promise<ModelInfo__Output>;

  close(): void;
}

/** The lstm_stack.v1 package as grpc-js service constructors and message definitions. */
export function loadProtos(protoRoot?: string): ProtoGrpcType['lstm_stack']['v1'];

export const status: typeof grpc.status;
export const Metadata: typeof grpc.Metadata;
export type Metadata = grpc.Metadata;
/** The folder holding protos/lstm_stack/v1/*.proto (this package's). */
export const PROTO_ROOT: string;
/** The .proto files, relative to PROTO_ROOT. */
export const PROTO_FILES: readonly string[];
/** The proto-loader options every definition is loaded with. */
export const LOADER_OPTIONS: Readonly<Options>;

'use strict';
// A small Node.js client for the lstm-stack scaler and model services.
//
// The .proto files are loaded at run time (no generated code) from the package's own protos/ folder: a
// copy of the repo's protos/ that `npm run prepare` makes (npm runs it after `npm ci` here and before
// `npm pack`), so an installed package needs nothing outside itself. Tensors cross the wire as dtype +
// shape + little-endian raw bytes, exactly like the Python client's codec.

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { once } = require('node:events');
const readline = require('node:readline');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// Proto imports are written relative to the folder holding protos/ ("protos/lstm_stack/v1/tensor.proto").
const PROTO_ROOT = __dirname;
const PROTO_FILES = Object.freeze([
  'protos/lstm_stack/v1/tensor.proto',
  'protos/lstm_stack/v1/scaler.proto',
  'protos/lstm_stack/v1/dataset.proto',
  'protos/lstm_stack/v1/model.proto',
]);

// keepCase: field names as in the .proto (snake_case), the same names grpcurl and Python use.
// longs: Number — int64 fields here are shapes, counts and seeds, all far below 2^53.
// enums: String — 'MINMAX', 'FLOAT64', ... (numbers are accepted when sending too).
// defaults: true — unset scalars come back as their zero value instead of undefined.
// oneofs: true — a virtual field names the set member of each oneof (e.g. event.event === 'epoch').
const LOADER_OPTIONS = Object.freeze({
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
});

const DEFAULT_DEADLINE_MS = 30_000;
// Training streams one event per epoch; the whole stream still has a deadline, just a long one.
const DEFAULT_TRAIN_DEADLINE_MS = 60 * 60 * 1000;
// The services accept 64 MiB messages by default (--max-message-mb); match it.
const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;
// Dataset uploads send chunks of about this many bytes (well inside the message limit).
const DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024;

let cachedPackage = null;

/** Load the lstm_stack.v1 package definitions (cached). `protoRoot` overrides the folder holding protos/. */
function loadProtos(protoRoot = PROTO_ROOT) {
  if (protoRoot === PROTO_ROOT && cachedPackage) return cachedPackage;
  const files = PROTO_FILES.map((file) => path.join(protoRoot, file));
  const missing = files.filter((file) => !fs.existsSync(file));
  if (missing.length) {
    throw new Error(
      `missing ${missing.join(', ')}: in a checkout of the repo, \`npm ci\` (or \`npm run prepare\`) in ` +
        'clients/node copies them from protos/',
    );
  }
  const definition = protoLoader.loadSync(files, { ...LOADER_OPTIONS, includeDirs: [protoRoot] });
  const pkg = grpc.loadPackageDefinition(definition).lstm_stack.v1;
  if (protoRoot === PROTO_ROOT) cachedPackage = pkg;
  return pkg;
}

// ---- Tensor codec ----

const DTYPES = Object.freeze({
  FLOAT32: { code: 1, size: 4, Array: Float32Array, get: 'getFloat32', set: 'setFloat32' },
  FLOAT64: { code: 2, size: 8, Array: Float64Array, get: 'getFloat64', set: 'setFloat64' },
  INT32: { code: 3, size: 4, Array: Int32Array, get: 'getInt32', set: 'setInt32' },
  INT64: { code: 4, size: 8, Array: BigInt64Array, get: 'getBigInt64', set: 'setBigInt64' },
});
const DTYPE_BY_CODE = Object.fromEntries(Object.entries(DTYPES).map(([name, d]) => [d.code, name]));

function dtypeName(dtype) {
  const name = typeof dtype === 'number' ? DTYPE_BY_CODE[dtype] : dtype;
  if (!DTYPES[name]) {
    throw new TypeError(`unsupported dtype ${dtype}; expected one of ${Object.keys(DTYPES).join(', ')}`);
  }
  return name;
}

function dtypeOfTypedArray(array) {
  if (array instanceof Float64Array) return 'FLOAT64';
  if (array instanceof Float32Array) return 'FLOAT32';
  if (array instanceof Int32Array) return 'INT32';
  if (array instanceof BigInt64Array) return 'INT64';
  return null;
}

/** Shape of a rectangular nested array; throws on ragged input. */
function inferShape(nested) {
  const shape = [];
  let level = nested;
  while (Array.isArray(level)) {
    shape.push(level.length);
    if (level.length === 0) break;
    level = level[0];
  }
  const check = (node, depth, where) => {
    if (depth === shape.length) {
      if (Array.isArray(node)) throw new TypeError(`ragged array: ${where} nests deeper than shape [${shape}]`);
      return;
    }
    if (!Array.isArray(node) || node.length !== shape[depth]) {
      const got = Array.isArray(node) ? `length ${node.length}` : 'a scalar';
      throw new TypeError(`ragged array: ${where} is ${got}, expected length ${shape[depth]}`);
    }
    node.forEach((child, i) => check(child, depth + 1, `${where}[${i}]`));
  };
  check(nested, 0, 'x');
  return shape;
}

function product(shape) {
  return shape.reduce((a, b) => a * b, 1);
}

/**
 * Encode data as a Tensor message: { dtype, shape, raw } with little-endian bytes.
 *
 * `data` is a nested array (shape inferred) or a typed array (Float64Array, Float32Array, Int32Array,
 * BigInt64Array; pass `shape`, default 1-D). `dtype` defaults to the typed array's own, else FLOAT64.
 */
function encodeTensor(data, { shape, dtype } = {}) {
  let flat;
  let resolvedShape = shape;
  if (ArrayBuffer.isView(data) && !(data instanceof DataView)) {
    flat = data;
    resolvedShape = shape ? [...shape] : [data.length];
    dtype = dtype || dtypeOfTypedArray(data) || 'FLOAT64';
  } else if (Array.isArray(data)) {
    const inferred = inferShape(data);
    flat = data.flat(Infinity);
    resolvedShape = shape ? [...shape] : inferred;
    dtype = dtype || 'FLOAT64';
  } else {
    throw new TypeError('encodeTensor: expected a nested array or a typed array');
  }
  const name = dtypeName(dtype);
  const spec = DTYPES[name];
  if (resolvedShape.some((d) => !Number.isInteger(d) || d < 0)) {
    throw new TypeError(`encodeTensor: shape [${resolvedShape}] must hold non-negative integers`);
  }
  if (product(resolvedShape) !== flat.length) {
    throw new TypeError(
      `encodeTensor: shape [${resolvedShape}] holds ${product(resolvedShape)} values but ${flat.length} were given`,
    );
  }
  const raw = Buffer.alloc(flat.length * spec.size);
  // DataView with littleEndian=true writes the wire byte order on any host.
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  for (let i = 0; i < flat.length; i += 1) {
    let value = flat[i];
    if (name === 'INT64') value = BigInt(value);
    else value = Number(value);
    view[spec.set](i * spec.size, value, true);
  }
  return { dtype: name, shape: resolvedShape, raw };
}

/**
 * Decode a Tensor message into { dtype, shape, data } where data is a flat typed array
 * (INT64 decodes to a BigInt64Array). Accepts the JSON `values` fallback too.
 */
function decodeTensor(tensor) {
  if (!tensor) throw new TypeError('decodeTensor: no tensor');
  const raw = tensor.raw && tensor.raw.length ? Buffer.from(tensor.raw) : null;
  const values = tensor.values || [];
  const shape = (tensor.shape || []).map(Number);
  if (raw && values.length) throw new TypeError('decodeTensor: tensor sets both raw and values');
  if (values.length) {
    const name = tensor.dtype && tensor.dtype !== 'DTYPE_UNSPECIFIED' ? dtypeName(tensor.dtype) : 'FLOAT64';
    const spec = DTYPES[name];
    const resolved = shape.length ? shape : [values.length];
    if (product(resolved) !== values.length) {
      throw new TypeError(`decodeTensor: shape [${resolved}] does not hold ${values.length} values`);
    }
    const data = name === 'INT64' ? BigInt64Array.from(values, (v) => BigInt(v)) : spec.Array.from(values);
    return { dtype: name, shape: resolved, data };
  }
  const name = dtypeName(tensor.dtype);
  const spec = DTYPES[name];
  const count = product(shape);
  const byteLength = raw ? raw.length : 0;
  if (count * spec.size !== byteLength) {
    throw new TypeError(
      `decodeTensor: shape [${shape}] of ${name} needs ${count * spec.size} bytes, got ${byteLength}`,
    );
  }
  const data = new spec.Array(count);
  if (count) {
    const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    for (let i = 0; i < count; i += 1) data[i] = view[spec.get](i * spec.size, true);
  }
  return { dtype: name, shape, data };
}

/** Turn a decoded tensor (or a Tensor message) into nested plain arrays of numbers. */
function toNested(decodedOrTensor) {
  const decoded = decodedOrTensor.data ? decodedOrTensor : decodeTensor(decodedOrTensor);
  const flat = Array.from(decoded.data, Number);
  const build = (offset, depth) => {
    if (depth === decoded.shape.length) return flat[offset];
    const stride = product(decoded.shape.slice(depth + 1));
    return Array.from({ length: decoded.shape[depth] }, (_, i) => build(offset + i * stride, depth + 1));
  };
  if (decoded.shape.length === 0) return flat[0];
  return build(0, 0);
}

// ---- Dataset files, read a chunk of rows at a time ----

const NPY_DTYPES = Object.freeze({ '<f8': 'FLOAT64', '<f4': 'FLOAT32', '<i4': 'INT32', '<i8': 'INT64' });

/** The header of a .npy file: { dtype, shape, offset } (C order, little-endian numbers only). */
function readNpyHeader(fd) {
  const head = Buffer.alloc(12);
  fs.readSync(fd, head, 0, 12, 0);
  if (head.toString('latin1', 0, 6) !== '\x93NUMPY') throw new Error('not a .npy file (bad magic)');
  const major = head[6];
  const lengthBytes = major === 1 ? 2 : 4;
  const headerLength = major === 1 ? head.readUInt16LE(8) : head.readUInt32LE(8);
  const offset = 8 + lengthBytes + headerLength;
  const text = Buffer.alloc(headerLength);
  fs.readSync(fd, text, 0, headerLength, 8 + lengthBytes);
  const header = text.toString('latin1');
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const fortran = /'fortran_order':\s*(True|False)/.exec(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shape) throw new Error(`unreadable .npy header: ${header.trim()}`);
  const dtype = NPY_DTYPES[descr[1]];
  if (!dtype) throw new Error(`.npy dtype ${descr[1]} is not supported; expected ${Object.keys(NPY_DTYPES)}`);
  if (fortran[1] === 'True') throw new Error('.npy in Fortran order is not supported; save it in C order');
  const dims = shape[1].split(',').map((d) => d.trim()).filter(Boolean).map(Number);
  return { dtype, shape: dims, offset };
}

/**
 * Chunks of a .npy file's rows as Tensor messages ({ dtype, shape, raw }), `rowsPerChunk` rows at a
 * time (default about 4 MiB): the file is read a chunk at a time, never whole.
 */
function* npyChunks(file, { rowsPerChunk = 0 } = {}) {
  const fd = fs.openSync(file, 'r');
  try {
    const { dtype, shape, offset } = readNpyHeader(fd);
    if (shape.length === 0) throw new Error(`${file}: a scalar .npy has no rows`);
    const rowBytes = product(shape.slice(1)) * DTYPES[dtype].size;
    const rows = rowsPerChunk || Math.max(1, Math.floor(DEFAULT_CHUNK_BYTES / Math.max(rowBytes, 1)));
    for (let start = 0; start < shape[0]; start += rows) {
      const count = Math.min(rows, shape[0] - start);
      const raw = Buffer.alloc(count * rowBytes);
      const read = fs.readSync(fd, raw, 0, raw.length, offset + start * rowBytes);
      if (read !== raw.length) throw new Error(`${file}: truncated at row ${start}`);
      yield { dtype, shape: [count, ...shape.slice(1)], raw };
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** The column names and then chunks of a CSV file of numbers (header row first), read line by line. */
async function* csvChunks(file, { rowsPerChunk = 0, onColumns } = {}) {
  const lines = readline.createInterface({ input: fs.createReadStream(file), crlfDelay: Infinity });
  let width = 0;
  let rows = 0;
  let values = [];
  let lineNumber = 0;
  for await (const line of lines) {
    lineNumber += 1;
    if (!line.trim()) continue;
    const cells = line.split(',').map((cell) => cell.trim());
    if (!width) {
      width = cells.length;
      if (onColumns) onColumns(cells);
      rows = rowsPerChunk || Math.max(1, Math.floor(DEFAULT_CHUNK_BYTES / (8 * width)));
      continue;
    }
    if (cells.length !== width) throw new Error(`${file}:${lineNumber}: ${cells.length} values; the header names ${width}`);
    for (const cell of cells) {
      const value = Number(cell);
      if (cell === '' || Number.isNaN(value) && cell.toLowerCase() !== 'nan') {
        throw new Error(`${file}:${lineNumber}: not a number: ${JSON.stringify(cell)}`);
      }
      values.push(value);
    }
    if (values.length === rows * width) {
      yield encodeTensor(Float64Array.from(values), { shape: [rows, width] });
      values = [];
    }
  }
  if (!width) throw new Error(`${file}: empty CSV; expected a header row naming the columns`);
  if (values.length) yield encodeTensor(Float64Array.from(values), { shape: [values.length / width, width] });
}

// ---- Clients ----

function readMaybeFile(value) {
  if (value == null) return null;
  if (Buffer.isBuffer(value)) return value;
  return fs.readFileSync(value);
}

/**
 * Channel credentials: insecure by default; TLS when `rootCert` (PEM Buffer or path) or `tls: true`
 * is given; mutual TLS when `certChain` and `privateKey` are given too.
 */
function channelCredentials({ tls = false, rootCert, certChain, privateKey } = {}) {
  if (!tls && !rootCert && !certChain) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(
    readMaybeFile(rootCert),
    readMaybeFile(privateKey),
    readMaybeFile(certChain),
  );
}

class LstmStackClient {
  /**
   * @param {object} options
   * @param {string} [options.scalerAddress] host:port of the scaler service
   * @param {string} [options.modelAddress] host:port of the model service
   * @param {string} [options.token] sent as `authorization: Bearer <token>` on every call
   * @param {boolean} [options.tls] use TLS with the system roots
   * @param {Buffer|string} [options.rootCert] PEM (or its path) to trust instead of the system roots
   * @param {Buffer|string} [options.certChain] client certificate for mutual TLS
   * @param {Buffer|string} [options.privateKey] client key for mutual TLS
   * @param {string} [options.serverNameOverride] TLS name to check when it differs from the address
   * @param {number} [options.deadlineMs] deadline of each unary call (default 30 s)
   * @param {number} [options.trainDeadlineMs] deadline of a whole Train stream (default 1 h)
   */
  constructor(options = {}) {
    const {
      scalerAddress = process.env.LSTM_STACK_SCALER_ADDRESS,
      modelAddress = process.env.LSTM_STACK_MODEL_ADDRESS,
      token,
      serverNameOverride,
      maxMessageBytes = DEFAULT_MAX_MESSAGE_BYTES,
      deadlineMs = DEFAULT_DEADLINE_MS,
      trainDeadlineMs = DEFAULT_TRAIN_DEADLINE_MS,
      protoRoot,
    } = options;
    this.proto = loadProtos(protoRoot);
    this.token = token || null;
    this.deadlineMs = deadlineMs;
    this.trainDeadlineMs = trainDeadlineMs;
    const credentials = channelCredentials(options);
    const channelOptions = {
      'grpc.max_receive_message_length': maxMessageBytes,
      'grpc.max_send_message_length': maxMessageBytes,
    };
    if (serverNameOverride) channelOptions['grpc.ssl_target_name_override'] = serverNameOverride;
    this.scaler = scalerAddress
      ? new this.proto.ScalerService(scalerAddress, credentials, channelOptions)
      : null;
    this.model = modelAddress ? new this.proto.ModelService(modelAddress, credentials, channelOptions) : null;
    // The model service serves DatasetService too.
    this.datasets = modelAddress
      ? new this.proto.DatasetService(modelAddress, credentials, channelOptions)
      : null;
  }

  _metadata() {
    const metadata = new grpc.Metadata();
    // Sent as plain metadata so the same token works on a plaintext loopback channel and over TLS.
    if (this.token) metadata.set('authorization', `Bearer ${this.token}`);
    return metadata;
  }

  _client(service) {
    const client = this[service];
    if (!client) {
      const env = service === 'scaler' ? 'LSTM_STACK_SCALER_ADDRESS' : 'LSTM_STACK_MODEL_ADDRESS';
      const option = service === 'scaler' ? 'scalerAddress' : 'modelAddress';
      throw new Error(`no ${service} address: pass ${option} or set ${env}`);
    }
    return client;
  }

  /** Call any unary RPC: `call('scaler', 'Fit', request)`. Resolves with the response message. */
  call(service, method, request, { deadlineMs = this.deadlineMs } = {}) {
    const client = this._client(service);
    if (typeof client[method] !== 'function') {
      return Promise.reject(new Error(`${service} service has no method ${method}`));
    }
    const deadline = new Date(Date.now() + deadlineMs);
    return new Promise((resolve, reject) => {
      client[method](request, this._metadata(), { deadline }, (error, response) => {
        if (error) reject(error);
        else resolve(response);
      });
    });
  }

  /** Wait until both configured channels are connected (or the deadline passes). */
  waitForReady(deadlineMs = this.deadlineMs) {
    const deadline = new Date(Date.now() + deadlineMs);
    const clients = [this.scaler, this.model].filter(Boolean);
    return Promise.all(
      clients.map(
        (client) =>
          new Promise((resolve, reject) => {
            client.waitForReady(deadline, (error) => (error ? reject(error) : resolve()));
          }),
      ),
    );
  }

  // ---- Scaler service ----

  /** Fit a new scaler version on `data` (nested array or typed array). Resolves with ScalerInfo. */
  fitScaler({ data, kind = 'MINMAX', layout, scalerId = '', params, shape, deadlineMs } = {}) {
    const spec = { kind };
    if (layout) spec.layout = layout;
    if (params) Object.assign(spec, params); // e.g. { minmax: { feature_min: -1, feature_max: 1 } }
    return this.call(
      'scaler',
      'Fit',
      { scaler_id: scalerId, spec, data: encodeTensor(data, { shape }) },
      { deadlineMs },
    );
  }

  /** Transform data with a fitted scaler; resolves with nested arrays. */
  async transform(scalerId, data, { version = 0, shape, deadlineMs } = {}) {
    const response = await this.call(
      'scaler',
      'Transform',
      { scaler_id: scalerId, version, data: encodeTensor(data, { shape }) },
      { deadlineMs },
    );
    return toNested(response.data);
  }

  async inverseTransform(scalerId, data, { version = 0, shape, deadlineMs } = {}) {
    const response = await this.call(
      'scaler',
      'InverseTransform',
      { scaler_id: scalerId, version, data: encodeTensor(data, { shape }) },
      { deadlineMs },
    );
    return toNested(response.data);
  }

  // ---- Model service ----

  /**
   * Start a Train stream. Returns the grpc-js stream: `for await (const event of stream)`, or listen to
   * 'data'/'error'/'end'. Each event has `event.event` naming the set member: 'started', 'epoch', 'done'.
   * `stream.cancel()` stops training (the server sees CANCELLED).
   */
  trainStream(request, { deadlineMs = this.trainDeadlineMs } = {}) {
    const client = this._client('model');
    return client.Train(request, this._metadata(), { deadline: new Date(Date.now() + deadlineMs) });
  }

  /** Train to completion, calling onEvent for every event; resolves with the final ModelInfo. */
  async train(request, { onEvent, deadlineMs } = {}) {
    let done = null;
    for await (const event of this.trainStream(request, { deadlineMs })) {
      if (onEvent) onEvent(event);
      if (event.event === 'done') done = event.done;
    }
    if (!done) throw new Error('Train stream ended without a final ModelInfo');
    return done;
  }

  /** Predict in original units; resolves with { model_id, version, values, probabilities, labels }. */
  async predict(modelId, x, { version = 0, shape, deadlineMs } = {}) {
    const response = await this.call(
      'model',
      'Predict',
      { model_id: modelId, version, x: encodeTensor(x, { shape }) },
      { deadlineMs },
    );
    const decode = (tensor) => (tensor && tensor.dtype !== 'DTYPE_UNSPECIFIED' ? toNested(tensor) : null);
    return {
      model_id: response.model_id,
      version: response.version,
      values: decode(response.values),
      probabilities: decode(response.probabilities),
      labels: decode(response.labels),
    };
  }

  /**
   * The next `horizon` steps (0 = the model's) after `history` in raw units — (length,), (length,
   * columns) or (series, length, columns) for many series in one call — or after the last rows of a
   * stored series dataset (`datasetId`). Resolves with { model_id, version, horizon, target_columns,
   * point (series x horizon x targets), levels, quantiles (series x horizon x targets x levels, or null) }.
   */
  async forecast(modelId, history, { datasetId = '', horizon = 0, version = 0, shape, deadlineMs } = {}) {
    if ((history === undefined || history === null) === !datasetId) {
      throw new Error('give history or datasetId (one of them)');
    }
    const request = { model_id: modelId, version, horizon };
    if (datasetId) request.dataset_id = datasetId;
    else request.history = encodeTensor(history, { shape });
    const response = await this.call('model', 'Forecast', request, { deadlineMs });
    const quantiles = response.quantile_values && response.quantile_values.dtype !== 'DTYPE_UNSPECIFIED'
      ? toNested(response.quantile_values)
      : null;
    return {
      model_id: response.model_id,
      version: response.version,
      horizon: response.horizon,
      target_columns: response.target_columns,
      point: toNested(response.point),
      levels: response.quantiles,
      quantiles,
    };
  }

  /**
   * A rolling-origin backtest of `windows` origins on `series` (raw units), the stream read to its end.
   * Resolves with { windows: [{ index, origin, metrics, forecast, actual, lower, upper, model_id,
   * model_version }], summary: { windows, metrics } }; forecast/actual are horizon x targets, lower and
   * upper the outermost quantiles (null for point models). `retrain` trains the version's settings on
   * the rows before every origin (scratch versions, deleted afterwards): give it a long deadline.
   */
  backtest(modelId, series, {
    windows = 5, originStep = 0, horizon = 0, seasonLength = 0, retrain = false, version = 0, shape,
    deadlineMs = retrain ? this.trainDeadlineMs : this.deadlineMs,
  } = {}) {
    const client = this._client('model');
    const request = {
      model_id: modelId,
      version,
      series: encodeTensor(series, { shape }),
      windows,
      origin_step: originStep,
      horizon,
      season_length: seasonLength,
      retrain,
    };
    const decode = (tensor) => (tensor && tensor.dtype !== 'DTYPE_UNSPECIFIED' ? toNested(tensor) : null);
    return new Promise((resolve, reject) => {
      const result = { windows: [], summary: null };
      const call = client.Backtest(request, this._metadata(), { deadline: new Date(Date.now() + deadlineMs) });
      call.on('data', (event) => {
        if (event.event === 'window') {
          const w = event.window;
          result.windows.push({
            index: w.index,
            origin: Number(w.origin),
            metrics: w.metrics,
            forecast: decode(w.forecast),
            actual: decode(w.actual),
            lower: decode(w.lower),
            upper: decode(w.upper),
            model_id: w.model_id,
            model_version: w.model_version,
          });
        } else if (event.event === 'summary') {
          result.summary = { windows: event.summary.windows, metrics: event.summary.metrics };
        }
      });
      call.on('error', reject);
      call.on('end', () => {
        if (result.summary) resolve(result);
        else reject(new Error('the Backtest stream ended without its summary'));
      });
    });
  }

  getModel(modelId, { version = 0, deadlineMs } = {}) {
    return this.call('model', 'GetModel', { model_id: modelId, version }, { deadlineMs });
  }

  deleteModel(modelId, { version = 0, deadlineMs } = {}) {
    return this.call('model', 'DeleteModel', { model_id: modelId, version }, { deadlineMs });
  }

  // ---- Dataset service (on the model service) ----

  /**
   * Upload a dataset from an (async) iterable of chunks, each { series: Tensor } or { x: Tensor,
   * y: Tensor } (Tensor messages as encodeTensor makes them). The header rides on the first chunk.
   * Chunks are written as the stream drains: one or two in memory at a time. Resolves with DatasetInfo.
   */
  uploadDataset({ header, chunks, deadlineMs = this.trainDeadlineMs }) {
    const client = this._client('datasets');
    return new Promise((resolve, reject) => {
      let settled = false;
      const call = client.Upload(this._metadata(), { deadline: new Date(Date.now() + deadlineMs) }, (error, info) => {
        settled = true;
        if (error) reject(error);
        else resolve(info);
      });
      const pump = async () => {
        let first = true;
        for await (const chunk of chunks) {
          if (settled) return; // the server already answered (an error): stop reading the file
          const message = first ? { header, ...chunk } : chunk;
          first = false;
          if (!call.write(message)) await new Promise((drained) => call.once('drain', drained));
        }
        if (first) call.write({ header });
        call.end();
      };
      pump().catch((error) => {
        call.cancel();
        if (!settled) {
          settled = true;
          reject(error);
        }
      });
    });
  }

  /**
   * Upload a raw series file: .npy (read a chunk of rows at a time; `columns` required) or .csv (read
   * line by line; its header row names the columns unless `columns` is given).
   */
  async uploadSeriesFile(file, { columns, rowsPerChunk, deadlineMs } = {}) {
    const kind = 'DATASET_SERIES';
    if (file.endsWith('.npy')) {
      if (!columns || !columns.length) throw new Error('a .npy series needs columns (one name per column)');
      const chunks = (function* named() {
        for (const tensor of npyChunks(file, { rowsPerChunk })) yield { series: tensor };
      })();
      return this.uploadDataset({ header: { kind, columns }, chunks, deadlineMs });
    }
    if (!file.endsWith('.csv')) throw new Error(`expected a .npy or .csv file, got ${file}`);
    // The header row is read before the upload starts: the first chunk carries the column names.
    const header = { kind, columns: columns || [] };
    const rows = csvChunks(file, { rowsPerChunk, onColumns: (names) => { if (!columns) header.columns = names; } });
    const first = await rows.next();
    const chunks = (async function* named() {
      if (!first.done) yield { series: first.value };
      for await (const tensor of rows) yield { series: tensor };
    })();
    return this.uploadDataset({ header, chunks, deadlineMs });
  }

  /** Upload supervised samples from two .npy files (x: rows, timesteps, features; y: rows, ...). */
  uploadSupervisedFiles(xFile, yFile, { rowsPerChunk, deadlineMs } = {}) {
    const chunks = (function* paired() {
      const ys = npyChunks(yFile, { rowsPerChunk: rowsPerChunk || 4096 });
      for (const x of npyChunks(xFile, { rowsPerChunk: rowsPerChunk || 4096 })) {
        const y = ys.next();
        if (y.done) throw new Error(`${yFile} has fewer rows than ${xFile}`);
        yield { x, y: y.value };
      }
    })();
    return this.uploadDataset({ header: { kind: 'DATASET_SUPERVISED' }, chunks, deadlineMs });
  }

  getDataset(datasetId, { deadlineMs } = {}) {
    return this.call('datasets', 'GetDataset', { dataset_id: datasetId }, { deadlineMs });
  }

  /** Every dataset, page by page. */
  async listDatasets({ pageSize = 0, deadlineMs } = {}) {
    const found = [];
    let token = '';
    do {
      const page = await this.call('datasets', 'ListDatasets', { page_size: pageSize, page_token: token }, { deadlineMs });
      found.push(...page.datasets);
      token = page.next_page_token;
    } while (token);
    return found;
  }

  deleteDataset(datasetId, { deadlineMs } = {}) {
    return this.call('datasets', 'DeleteDataset', { dataset_id: datasetId }, { deadlineMs });
  }

  /**
   * Stream a version to `filePath` as 'ONNX' or 'SAVED_MODEL' (a tar), chunk by chunk. The file is
   * written aside and renamed into place once its size and sha256 match the ExportInfo of the first
   * chunk, so it appears whole or not at all. Resolves with that ExportInfo.
   */
  async exportModel(modelId, filePath, { format = 'ONNX', version = 0, deadlineMs = this.deadlineMs } = {}) {
    const client = this._client('model');
    const formats = { ONNX: 'EXPORT_ONNX', SAVED_MODEL: 'EXPORT_SAVED_MODEL' };
    if (!formats[format]) throw new Error(`format must be ONNX or SAVED_MODEL, got ${format}`);
    const stream = client.ExportModel(
      { model_id: modelId, version, format: formats[format] },
      this._metadata(),
      { deadline: new Date(Date.now() + deadlineMs) },
    );
    const part = path.join(path.dirname(filePath), `.${path.basename(filePath)}.part`);
    const out = fs.createWriteStream(part);
    const hash = crypto.createHash('sha256');
    let info = null;
    let size = 0;
    try {
      for await (const chunk of stream) {
        if (chunk.info) info = chunk.info;
        hash.update(chunk.data);
        size += chunk.data.length;
        if (!out.write(chunk.data)) await once(out, 'drain');
      }
      out.end();
      await once(out, 'finish');
      if (!info || size !== info.size_bytes || hash.digest('hex') !== info.sha256) {
        throw new Error(`the export of ${modelId} arrived incomplete (${size} bytes)`);
      }
      fs.renameSync(part, filePath);
      return info;
    } finally {
      out.destroy();
      fs.rmSync(part, { force: true });
    }
  }

  /**
   * Import a Keras archive (.keras) as a new version, streamed from `filePath` in chunks. `head` is the
   * head the model ends in, e.g. { task: 'REGRESSION' }; `header` may add model_id, input, x_scaler,
   * y_scaler. Resolves with the new version's ModelInfo.
   */
  importModel(filePath, { head, deadlineMs = this.deadlineMs, chunkBytes = 1024 * 1024, ...header } = {}) {
    const client = this._client('model');
    return new Promise((resolve, reject) => {
      const call = client.ImportModel(
        this._metadata(),
        { deadline: new Date(Date.now() + deadlineMs) },
        (error, response) => (error ? reject(error) : resolve(response)),
      );
      call.write({ header: { ...header, head } });
      const file = fs.createReadStream(filePath, { highWaterMark: chunkBytes });
      file.on('data', (data) => {
        if (!call.write({ data })) {
          file.pause();
          call.once('drain', () => file.resume());
        }
      });
      file.on('end', () => call.end());
      file.on('error', (error) => {
        call.cancel();
        reject(error);
      });
    });
  }

  close() {
    if (this.scaler) this.scaler.close();
    if (this.model) this.model.close();
    if (this.datasets) this.datasets.close();
  }
}

module.exports = {
  LstmStackClient,
  loadProtos,
  encodeTensor,
  decodeTensor,
  toNested,
  inferShape,
  channelCredentials,
  npyChunks,
  csvChunks,
  readNpyHeader,
  status: grpc.status,
  Metadata: grpc.Metadata,
  PROTO_ROOT,
  PROTO_FILES,
  LOADER_OPTIONS,
};

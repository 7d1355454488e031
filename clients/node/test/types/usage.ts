// A typed use of the public API: `tsc --noEmit` must accept every line, and must refuse each line
// marked @ts-expect-error (an unused expectation is itself an error), so the declarations are checked
// to be specific, not `any`. Never run: it only has to compile.
import {
  LstmStackClient,
  decodeTensor,
  encodeTensor,
  status,
  type ModelInfo__Output,
  type ScalerInfo__Output,
  type TrainEvent__Output,
  type TrainRequest,
} from '@lstm-stack/client';

export async function roundTrip(): Promise<number> {
  const client = new LstmStackClient({ scalerAddress: '127.0.0.1:50051', modelAddress: '127.0.0.1:50052', deadlineMs: 5000 });
  const scaler: ScalerInfo__Output = await client.fitScaler({ data: [[1, 2, 3], [40, 50, 60]], kind: 'MINMAX' });
  const id: string = scaler.id;
  const version: number = scaler.version;
  const scaled = await client.transform(id, [[50, 60, 70]], { version });

  const request: TrainRequest = {
    spec: {
      input: { timesteps: 3, features: 1 },
      layers: [{ lstm: { units: 4, activation: 'relu' } }],
      head: { task: 'REGRESSION', outputs: 1 },
    },
    supervised: { x: encodeTensor([[1, 2, 3], [2, 3, 4]]), y: encodeTensor(Float64Array.from([4, 5])) },
    epochs: 2,
    x_scaling: { kind: 'MINMAX' },
    y_scaling: { kind: 2 },
  };
  const seen: TrainEvent__Output[] = [];
  const model: ModelInfo__Output = await client.train(request, { onEvent: (event) => seen.push(event) });
  const state: 'MODEL_STATE_UNSPECIFIED' | 'TRAINING' | 'READY' | 'FAILED' | string = model.state;
  for await (const event of client.trainStream(request)) {
    if (event.event === 'epoch' && event.epoch) seen.push(event);
  }

  const prediction = await client.predict(model.id, [[50, 60, 70]]);
  const forecast = await client.forecast(model.id, [1, 2, 3, 4], { horizon: 2 });
  const firstStep: number = forecast.point[0][0][0];
  const exported = await client.exportModel(model.id, '/tmp/m.onnx', { format: 'ONNX' });
  const bytes: number = exported.size_bytes;
  const decoded = decodeTensor(encodeTensor(Int32Array.from([1, 2]), { shape: [2, 1] }));
  const notFound: number = status.NOT_FOUND;

  // @ts-expect-error: a scaler kind is one of the proto's names (or numbers)
  await client.fitScaler({ data: [[1]], kind: 'LOGARITHMIC' });
  // @ts-expect-error: exportModel takes ONNX or SAVED_MODEL
  await client.exportModel(model.id, '/tmp/m.bin', { format: 'PICKLE' });
  // @ts-expect-error: a reply's id is a string
  const wrong: number = scaler.id;
  // @ts-expect-error: TrainRequest fields are the proto's snake_case names
  const camel: TrainRequest = { batchSize: 4 };
  // @ts-expect-error: the model id comes first
  await client.predict([[1, 2, 3]]);

  client.close();
  return [scaled, prediction.values, state, firstStep, bytes, decoded.shape, notFound, wrong, camel, version].length;
}

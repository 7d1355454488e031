'use strict';
// The seed's first example from Node: fit a scaler, train a small stacked LSTM on the windows
// [1,2,3] -> 4 ... [40,50,60] -> 70 with live progress, then predict [50,60,70] (the seed gets ~80).
//
//   LSTM_STACK_SCALER_ADDRESS=127.0.0.1:50051 LSTM_STACK_MODEL_ADDRESS=127.0.0.1:50052 node example.js
//
// LSTM_STACK_EPOCHS (default 200) and LSTM_STACK_TOKEN (sent as a Bearer token) are optional.

const { LstmStackClient, encodeTensor } = require('./index.js');

const SEED_X = [
  [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6], [5, 6, 7], [6, 7, 8], [7, 8, 9], [8, 9, 10],
  [9, 10, 11], [10, 11, 12], [20, 30, 40], [30, 40, 50], [40, 50, 60],
];
const SEED_Y = [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 50, 60, 70];

// The seed's stack: LSTM(10, relu, return_sequences) -> LSTM(2, relu, rs) -> LSTM(10, relu) -> Dense(1).
const SEED_SPEC = {
  input: { timesteps: 3, features: 1 },
  layers: [
    { lstm: { units: 10, activation: 'relu' } },
    { lstm: { units: 2, activation: 'relu' } },
    { lstm: { units: 10, activation: 'relu' } },
  ],
  head: { task: 'REGRESSION', outputs: 1 },
  optimizer: { name: 'adam', learning_rate: 0.01 },
};

async function main() {
  const epochs = Number(process.env.LSTM_STACK_EPOCHS || 200);
  const client = new LstmStackClient({ token: process.env.LSTM_STACK_TOKEN });
  try {
    await client.waitForReady(10_000);

    // 1. A MinMax scaler fitted on the training windows, one column per timestep (as the seed does).
    const scaler = await client.fitScaler({ data: SEED_X, kind: 'MINMAX' });
    console.log(`scaler ${scaler.id} v${scaler.version}: ${scaler.spec.kind}`);
    console.log(`  data_min ${JSON.stringify(scaler.statistics.data_min)}`);
    console.log(`  data_max ${JSON.stringify(scaler.statistics.data_max)}`);
    const scaled = await client.transform(scaler.id, [[50, 60, 70]]);
    console.log(`  [50,60,70] scaled -> ${JSON.stringify(scaled)}`);

    // 2. Train; the model service asks the scaler service to fit x and y on the training split.
    const stride = Math.max(1, Math.floor(epochs / 10));
    const model = await client.train(
      {
        spec: SEED_SPEC,
        supervised: { x: encodeTensor(SEED_X), y: encodeTensor(SEED_Y) },
        epochs,
        batch_size: 16,
        seed: 7,
        // Standardized inputs/targets keep the relu stack (with its 2-unit bottleneck) from dying,
        // which MinMax's [0, 1] range does for some seeds.
        x_scaling: { kind: 'STANDARD' },
        y_scaling: { kind: 'STANDARD' },
      },
      {
        onEvent: (event) => {
          if (event.event === 'started') {
            const s = event.started;
            console.log(`training ${s.model_id} v${s.version}: ${s.n_train} train / ${s.n_validation} holdout rows`);
          } else if (event.event === 'epoch') {
            const e = event.epoch;
            if (e.epoch === 1 || e.epoch === e.epochs || e.epoch % stride === 0) {
              console.log(`  epoch ${String(e.epoch).padStart(4)}/${e.epochs}  loss ${e.loss.toExponential(3)}`);
            }
          }
        },
      },
    );
    console.log(`model ${model.id} v${model.version} ${model.state}: ${model.total_params} params, `
      + `${model.epochs_run} epochs in ${model.train_seconds.toFixed(1)} s`);

    // 3. Predict in original units.
    const prediction = await client.predict(model.id, [[50, 60, 70]]);
    console.log(`predict [50,60,70] -> ${prediction.values[0][0].toFixed(2)} (the seed expects about 80)`);
  } finally {
    client.close();
  }
}

main().catch((error) => {
  console.error(`example failed: ${error.code !== undefined ? `gRPC status ${error.code}: ` : ''}${error.details || error.message}`);
  process.exitCode = 1;
});

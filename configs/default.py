"""DoppelGANger with the paper's hyperparameters (Appendix B), on the built-in demo dataset.

Run:
  python launch.py --config=configs/default.py --workdir=/tmp/dg_demo
Train on your own data in the project's npz format:
  python launch.py --config=configs/default.py --config.data.format=npz --config.data.path=F.npz --workdir=W
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()

  c.data = ml_collections.ConfigDict()
  c.data.format = "auto"            # auto (demo without a path, npz for *.npz, dg for a DoppelGANger folder)
                                    # | demo | npz | dg | wwt | csv_long | gcut
  c.data.path = ""                  # file or folder of the dataset (unused for demo)
  c.data.split = "train"            # dg format: which data_<split>.npz to read
  c.data.feature_names = ""         # dg format: comma-separated names of the features (default feature_<i>)
  c.data.attribute_names = ""       # dg format: comma-separated names of the attributes
  c.data.max_samples = 0            # random subsample of this many series (0 = all)
  c.data.normalization = "zero_one"  # continuous values scaled to [0,1] ("zero_one") or [-1,1] ("minus_one_one")
  c.data.auto_normalize = True      # per-series min/max as generated "additional attributes" (§4.2)
  c.data.log_half_range = "auto"    # auto-normalisation's per-series half-ranges generated on a log scale
                                    # (True), linearly as in the paper (False), or "auto": log where a
                                    # feature's series each span a small share of its range, which can
                                    # otherwise collapse the feature (docs/design.md, docs/results.md)
  c.data.log1p = ""                 # comma-separated continuous variables to model as log1p(x), or "auto":
                                    # those spanning two decades or more (log1p, or asinh if signed)
  c.data.id_column = "id"           # csv_long: series id column
  c.data.time_column = ""           # csv_long: column to order records by ("" = file order)
  c.data.attribute_columns = ""     # csv_long: comma-separated attribute columns
  c.data.feature_columns = ""       # csv_long: comma-separated feature columns
  c.data.events_path = ""           # gcut: glob of task_events files (data.path: task_usage files)
  c.data.demo = ml_collections.ConfigDict()
  c.data.demo.num_samples = 1000    # series in the demo dataset
  c.data.demo.length = 550          # steps per series (daily: weekly and yearly cycles)
  c.data.demo.seed = 0              # seed of the demo data (not of training)
  c.data.demo.variable_lengths = False  # some series stop early

  c.model = ml_collections.ConfigDict()
  c.model.sample_len = 0            # S: records per LSTM step; 0 = automatic (T/S near 50, §4.4)
  c.model.attribute_noise_dim = 5   # noise into the attribute MLP
  c.model.additional_noise_dim = 5  # noise into the min/max MLP
  c.model.feature_noise_dim = 5     # noise into the LSTM at every step
  c.model.feature_noise = "per_step"  # a fresh noise draw at every LSTM step (the paper), or "per_series"
  c.model.attribute_num_layers = 2  # hidden layers of the attribute MLP
  c.model.attribute_num_units = 100
  c.model.additional_num_layers = 2  # hidden layers of the min/max MLP
  c.model.additional_num_units = 100
  c.model.metadata_batch_norm = True  # BatchNorm after each hidden layer of both metadata MLPs, as in the
                                    # original (closer attribute histograms: README, Benchmarks)
  c.model.feature_num_units = 100   # LSTM units
  c.model.initial_state = "random"  # LSTM initial state: "random" N(0,1) or "zero"
  c.model.critic_num_layers = 4     # hidden layers of both critics
  c.model.critic_num_units = 200
  c.model.aux_critic = True         # auxiliary critic on the metadata (§4.3)
  c.model.aux_critic_weight = 1.0   # alpha: weight of the auxiliary critic in the generator loss (each critic
                                    # trains on its own unweighted loss, as in the original)
  c.model.aux_critic_levels = True  # the auxiliary critic also sees each series' mean of each continuous feature
                                    # where, within a kind of series, the means are tied (a sensor's humidity
                                    # and temperature): through a map that magnifies that tie (docs/design.md)
  c.model.pack = 1                  # PacGAN packing degree (1 = off)
  c.model.whiten_levels = True      # the critics see features' levels that move together (a stock's prices)
                                    # through a map fitted on the data that magnifies their small
                                    # differences; other data: the paper's input (docs/design.md)
  c.model.exact_span = False        # True: each generated normalised series rescaled to span exactly what its
                                    # min/max imply, as real ones do (sines: discriminative 0.13 -> 0.08, but
                                    # stocklike's worse, the demo's correlations too; docs/design.md)
  c.model.exact_span_at_generation = "auto"  # True: the same rescale when generating only, training as the
                                    # paper (MBA's traffic spreads 0.60 -> 0.36, the demo's autocorrelation
                                    # 0.00078 -> 0.00057), but stocklike's score 0.01 -> 0.14 against its
                                    # training path; auto: unless features' levels move together (the
                                    # whiten_levels view: stock prices); False: never, as the paper
  c.model.step_critic_weight = 0.3  # a third critic judges the record-to-record differences of each smooth
                                    # continuous feature (encoding.SMOOTH_STEPS: sines, not stock prices, MBA or
                                    # the demo), standardised by the data's, also in the data's units with the
                                    # attributes (sines 77-84x -> 3.5x rougher than real, TimeGAN's score
                                    # 0.035 -> 0.011); 0 = none, as the paper; docs/design.md
  c.model.floor_flags = True        # a feature at its minimum in a tenth or more of the records (MBA's ping loss
                                    # rate: 98%) also gets an "at the floor" flag per record, as the generation
                                    # flags, decoded as exactly its minimum (docs/design.md)
  c.model.floor_series_flags = True  # and, with auto-normalisation, an "at the floor throughout" flag per series
  c.model.critic_difference_weight = 0.0  # > 0: critics also see each continuous feature's record-to-record
                                    # differences times this (10: sines 80x -> 9x rougher than real, but the
                                    # demo's autocorrelation and spreads worse; docs/design.md)

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 100          # each replica's batch, a multiple of the devices that split it
  c.train.num_seeds = 1             # K replicas (seeds seed..seed+K-1) trained as one vectorised program
  c.train.num_steps = 100_000       # training steps (one step = d_rounds critic + g_rounds generator updates)
  c.train.max_minutes = 0.0         # wall-clock budget in minutes over all of the run's launches (a resume gets
                                    # what is left); checkpoints and stops when spent (0 = none)
  c.train.seed = 0                  # seeds parameters, noise and batch order
  c.train.learning_rate = 1e-3      # Adam, both generator and critics
  c.train.lr_decay_start = 0.5      # after this fraction of the run both learning rates fall linearly to
                                    # zero at its last step (num_steps, or where max_minutes will stop it);
                                    # 1 = constant, as the paper (sines: TimeGAN's discriminative score
                                    # 0.16 -> 0.04; docs/design.md)
  c.train.beta1 = 0.5
  c.train.beta2 = 0.999
  c.train.gp_weight = 10.0          # gradient-penalty weight lambda
  c.train.d_rounds = 1              # critic updates per step
  c.train.g_rounds = 1              # generator updates per step
  c.train.steps_per_dispatch = 10   # steps fused into one compiled call (fewer host round trips)
  c.train.data_placement = "auto"   # device: the encoded data placed on the devices once, batches gathered
                                    # there; host: batches built on the host each dispatch; sharded (data.path
                                    # = PATH-{shard}.npz): each device holds, and each process reads, only its
                                    # block; sharded_host: each process reads its blocks and builds its devices'
                                    # batches on the host; auto: for such a path sharded when a block fits on a
                                    # device, else sharded_host; otherwise device when the data fits, else host
  c.train.log_every = 200           # progress line and metrics.jsonl row every this many steps
  c.train.checkpoint_every = 2000   # checkpoint every this many steps (and at the end)
  c.train.keep_checkpoints = 2      # checkpoints kept on disk
  c.train.max_rollbacks = 3         # a replica whose loss or parameters turn non-finite goes back to its state
                                    # before the dispatch (fresh random streams); one more than this freezes it
  c.train.init_from = ""            # start a new run from another: WORKDIR, WORKDIR@STEP or a bundle folder
                                    # (weights, and that run's schema; the data must fit that schema)
  c.train.init_optimizer = False    # with init_from a workdir: also take its Adam states
  c.train.fixed_parts = ""          # with init_from: generator parts that keep its weights, of attribute_mlp,
                                    # additional_mlp (min/max), lstm, heads; e.g. "lstm,heads" fine-tunes only
                                    # the metadata generators (private fine-tuning: docs/privacy.md)
  c.train.per_replica = ""          # JSON {field: [one value per replica]}: replicas that differ in learning
                                    # rates, Adam betas, gp_weight or aux_critic_weight, still one program
                                    # (settings.PER_REPLICA_FIELDS; --mode=sweep groups such variants itself)
  c.train.tensorboard = True        # also write the logged scalars as TensorBoard events in <workdir>/tensorboard
                                    # (gs:// workdirs: pip install google-cloud-storage, or set False)
  c.train.eval_every = 0            # score every replica's generator on device every this many steps and keep
                                    # each replica's best-scored generator (dg_jax/scoring.py); 0 = off
  c.train.eval_samples = 200        # series generated per replica at each scoring
  c.train.eval_holdout = 0.1        # with scoring on: fraction of the series held out of training and scored
                                    # against (none when under 20 series); 0 = score against the training data
  c.train.profile_steps = ""        # "first,last": JAX profiler trace of the dispatches running those steps,
                                    # in <workdir>/profile (TensorBoard's profile tab, xprof); "" = none

  c.privacy = ml_collections.ConfigDict()  # DP-SGD on the critics (dg_jax/privacy.py)
  c.privacy.enabled = False         # train with differential privacy (batches then drawn independently per step)
  c.privacy.l2_clip = 1.0           # L2 bound on each example's critic gradient
  c.privacy.noise_multiplier = 0.0  # Gaussian noise std / l2_clip; 0 = calibrate to target_epsilon before training
  c.privacy.target_epsilon = 0.0    # epsilon budget: training stops before exceeding it (0 = none)
  c.privacy.delta = 0.0             # delta of (epsilon, delta)-DP; 0 = 1 / (10 n) for n training series
  c.privacy.secret_seed = True      # draw train.seed from the OS's secure randomness (known noise voids the
                                    # guarantee); kept in the workdir for resume, left out of bundles
  c.privacy.sampling = "fixed"      # fixed: B of the n series per step, replace-one neighbours; poisson: each
                                    # series with probability B/n, add-or-remove neighbours (less noise)
  c.privacy.capacity = 0            # poisson: rows per batch, sampled series then padding (0 = choose)
  c.privacy.bands = 1               # > 1 (with sampling=poisson): DP-BandMF, noise correlated over b steps and
                                    # cyclic Poisson sampling (b groups); 1 = DP-SGD (docs/privacy.md)
  c.privacy.band_coefficients = ()  # DP-BandMF's strategy; () = jax-privacy's optimised one for the run

  c.num_devices = 0                 # devices to train on (0 = all)
  c.cpu_devices = 0                 # on CPU: virtual devices to split the batch over (0 = one per core);
                                    # JAX_NUM_CPU_DEVICES, when set, wins
  c.distributed = False             # launch.py: jax.distributed.initialize() with the cluster JAX detects
                                    # (SLURM, TPU pods, ...); or give --coordinator_address etc.
  return c

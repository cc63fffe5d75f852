"""The paper's four general baselines (§5.1.2, Appendix B sizes) on the data of configs/default.py.

The argument picks the baseline: hmm | ar | rnn | naive_gan. Run:
  python launch.py --config=configs/baselines.py:ar --workdir=/tmp/ar_demo
  python launch.py --mode=generate --workdir=/tmp/ar_demo --num_samples=1000 --output=/tmp/ar_demo.npz
On MBA (any data.* override of configs/default.py works):
  python launch.py --config=configs/baselines.py:rnn --config.data.format=dg \\
    --config.data.path=../shared/data/mba --config.data.feature_names=traffic_byte_counter,ping_loss_rate \\
    --config.data.attribute_names=ISP,technology,state --workdir=/tmp/rnn_mba

HMM, AR and RNN draw attribute rows from the training rows (empirical distribution), independently
of the series. AR and RNN draw the first record from a Gaussian fitted to the first records and
then feed their predictions back; so that generation is random, continuous predictions get
Gaussian noise with the training residual std (noise_scale) and categorical blocks and the
generation flag are sampled from the predicted softmax (sample_discrete). Series end at the first
"end" flag, so lengths vary even where every training series has length T: on MBA (all 56) after
2000 steps the mean length was 36 (AR) and 49 (RNN) with sample_discrete, 49 and 56 with argmax
flags (sample_discrete=False). The neural baselines train in one go (no checkpoints, no resume; train.max_minutes
caps the time). train.num_steps is CPU-sized: on MBA (600 x 56) on 2 shared CPU cores AR ran
~14 steps/s, RNN ~18, naive GAN ~100, so 5000 steps take about 6, 5 and 1 minutes; the cost per
step grows with T (the demo's default T = 550 is ~10x MBA's). HMM fits MBA in ~15 s.
"""
import ml_collections

from configs import default

NAMES = ("hmm", "ar", "rnn", "naive_gan")


def get_config(arg: str = "hmm"):
  if arg not in NAMES:
    raise ValueError(f"configs/baselines.py:{arg}: unknown baseline; expected one of {NAMES}")
  c = default.get_config()
  c.data.auto_normalize = False     # baselines model globally scaled values (per-series min/max is DG's §4.2);
                                    # when True, HMM/AR/RNN draw each row's min/max with its attributes
  c.train.num_steps = 5000          # neural baselines: Adam steps of batch train.batch_size (100); unused by hmm
  c.train.log_every = 500           # progress line every this many steps
  if arg in ("ar", "rnn"):
    c.train.beta1 = 0.9             # Adam's usual b1 for supervised training (0.5 is for the GANs)

  c.baseline = ml_collections.ConfigDict()
  c.baseline.name = arg             # which baseline this run trains

  c.baseline.hmm = ml_collections.ConfigDict()
  c.baseline.hmm.num_states = 10    # hidden states (Gaussian emissions, diagonal covariances; hmmlearn)
  c.baseline.hmm.n_iter = 50        # EM iterations at most
  c.baseline.hmm.tol = 1e-2         # EM stops when the log-likelihood gains less than this
  c.baseline.hmm.min_covar = 1e-3   # floor on the emission variances

  c.baseline.ar = ml_collections.ConfigDict()
  c.baseline.ar.order = 3           # p: R_t = f(A, R_{t-1}, ..., R_{t-p})
  c.baseline.ar.num_layers = 4      # hidden layers of the MLP f
  c.baseline.ar.num_units = 200     # units per hidden layer
  c.baseline.ar.noise_scale = 1.0   # generation noise on continuous outputs, in residual stds (0 = none)
  c.baseline.ar.sample_discrete = True  # sample categorical features and flags (False: argmax)

  c.baseline.rnn = ml_collections.ConfigDict()
  c.baseline.rnn.num_units = 100    # units of the 1-layer LSTM fed [A, R_{t-1}]
  c.baseline.rnn.noise_scale = 1.0  # generation noise on continuous outputs, in residual stds (0 = none)
  c.baseline.rnn.sample_discrete = True  # sample categorical features and flags (False: argmax)

  c.baseline.naive_gan = ml_collections.ConfigDict()
  c.baseline.naive_gan.noise_dim = 100            # generator input noise (WGAN-GP weight: train.gp_weight = 10)
  c.baseline.naive_gan.generator_num_layers = 4   # hidden layers of the generator MLP
  c.baseline.naive_gan.generator_num_units = 200  # units per hidden layer
  c.baseline.naive_gan.critic_num_layers = 4      # hidden layers of the critic MLP
  c.baseline.naive_gan.critic_num_units = 200     # units per hidden layer
  return c

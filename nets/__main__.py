"""python -m nets: what kern's commands are (each says more with --help)."""

COMMANDS = """kern: Darknet classifiers on hand-written kernels. Commands (also as kern-predict, kern-valid,
kern-train where installed):

  python -m nets.predict [CFG] [WEIGHTS] [IMAGE|FOLDER ...]   classify images (Darknet's classifier predict)
  python -m nets.predict --list                              the shipped cfgs and whether their weights are here
  python -m nets.valid CFG WEIGHTS SOURCE                    top-1 / top-k accuracy (classifier valid)
  python -m nets.train DATA CFG [WEIGHTS]                    train (classifier train)
  python -m kern.lessons                                     how convolution gets fast, step by step

From Python: import nets; net = nets.load("tiny"); net.predict(images). README.md and docs/ say more."""


def main() -> None:
    print(COMMANDS)


if __name__ == "__main__":
    main()

"""Entry point: python run.py --RUN={train,val,test} --MODEL=small --DATASET=vqa [flags]; see README."""
import sys

from mmnas.cli import main

if __name__ == "__main__":
    sys.exit(main())

# SVIP: rank the people in a video clip by social importance.
# Stages: prepare -> extract -> train -> evaluate -> report, each under results/<stage>/<hash>/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"


# The landing page of the HTML report, with the run's headline once there is one.
report: workflow_description()


include: "rules/prepare.smk"
include: "rules/extract.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


onsuccess:
    note = rejected_note()
    if note:
        print(note)


rule all:
    input:
        REPORT_OUTPUTS,
        *(str(path) for path in learning_curve_outputs().values()),
    default_target: True

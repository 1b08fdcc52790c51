# gnuplot -e "run='runs/x'" pipelines/curves.gp: RUN/curves.png from RUN/curves.tsv
# (written by dino-report.py): loss and teacher entropy (nats, left) and the
# teacher's k-NN top-1 (%, right) against epoch.
set terminal pngcairo size 900,540 noenhanced
set output run.'/curves.png'
set title run
set xlabel 'epoch'
set ylabel 'nats'
set y2label 'k-NN top-1 (%)'
set y2tics
set ytics nomirror
set key outside bottom center horizontal
set grid
set datafile missing 'NaN'
f = run.'/curves.tsv'
plot f using 1:2 with linespoints title 'loss', \
     f using 1:3 with linespoints title 'teacher entropy', \
     f using 1:4 axes x1y2 with linespoints pt 7 title 'k-NN top-1'

module github.com/cardmeter/cardmeter

go 1.26.8

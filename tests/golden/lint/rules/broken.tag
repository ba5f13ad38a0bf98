tag "复购" when count(orders) >= 2 and
tag "上海" when cty == "上海"

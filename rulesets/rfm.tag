# RFM 模型（《企业微信如何做用户标签》：RFM 模型标签）
#
# 只给近一年下过单的粉丝打分：R（最近一次下单距今）、F（一年内下单次数）、
# M（一年内消费金额）各按五分位打 1-5 分，分数在买家之间比较（quintile），
# 不是固定阈值：粉丝整体消费变了，分段跟着变。R 越近分越高（6 - 五分位）。
# 没买过或一年内没下单的粉丝不参与排名，也不进任何分段，否则一大批
# 0 次、0 元会把五分位压扁。
#
# 三项都按“高/低”两档（分数 >= rfm_high 为高）组合成八个经典分段，
# 条件互不重叠，作为互斥组。并列的值按 openid 顺序分到相邻的档（与 SQL 的
# NTILE 相同），所以同样次数的买家可能落在两档的分界两侧。

# -- 阈值（可调） --------------------------------------------------------------
let rfm_window = 365d  # 只看近一年的订单
let rfm_high = 3  # 五分位分数 >= 3 算“高”

# -- 派生条件：五分位分数（不参与排名的粉丝缺失，规则不成立） --------------------
let rfm_buyer = exists(orders within rfm_window)
let rfm_r = 6 - quintile(days_since(last(orders.created_at)) where rfm_buyer)
let rfm_f = quintile(count(orders within rfm_window) where rfm_buyer)
let rfm_m = quintile(sum(orders.amount within rfm_window) where rfm_buyer)

group "RFM" exclusive {
  tag "重要价值" when rfm_r >= rfm_high and rfm_f >= rfm_high and rfm_m >= rfm_high {
    description "最近买过、买得多、花得多"
    priority 55
  }

  tag "重要发展" when rfm_r >= rfm_high and rfm_f < rfm_high and rfm_m >= rfm_high {
    description "最近买过、花得多，次数少"
    priority 55
  }

  tag "重要保持" when rfm_r < rfm_high and rfm_f >= rfm_high and rfm_m >= rfm_high {
    description "买得多、花得多，近来没买"
    priority 55
  }

  tag "重要挽留" when rfm_r < rfm_high and rfm_f < rfm_high and rfm_m >= rfm_high {
    description "花得多，次数少且近来没买"
    priority 55
  }

  tag "一般价值" when rfm_r >= rfm_high and rfm_f >= rfm_high and rfm_m < rfm_high {
    description "最近买过、买得多，花得少"
    priority 55
  }

  tag "一般发展" when rfm_r >= rfm_high and rfm_f < rfm_high and rfm_m < rfm_high {
    description "最近买过，次数少、花得少"
    priority 55
  }

  tag "一般保持" when rfm_r < rfm_high and rfm_f >= rfm_high and rfm_m < rfm_high {
    description "买得多，花得少且近来没买"
    priority 55
  }

  tag "一般挽留" when rfm_r < rfm_high and rfm_f < rfm_high and rfm_m < rfm_high {
    description "次数少、花得少、近来没买"
    priority 55
  }
}
